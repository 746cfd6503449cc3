//! Refuses YAML anchors and aliases in documents sent to the admin API.
//!
//! An alias repeats a whole subtree, so a few hundred bytes can stand for
//! billions of nodes (the "billion laughs" document). A config never needs
//! them, so a document using one is refused before it is expanded: only
//! libyaml's scanner runs (linear in the input, no tree built).

/// `Err` names the first anchor or alias (line and column, 1-based).
/// A syntax error is left to the YAML parser, which reports it in detail.
pub fn refuse_anchors(text: &str) -> Result<(), String> {
    let mut parser = std::mem::MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit();
    // SAFETY: the parser is initialised before use and deleted on every
    // path; the input slice outlives the parser (both live in this call);
    // every token is deleted after being read.
    unsafe {
        if unsafe_libyaml::yaml_parser_initialize(parser.as_mut_ptr()).fail {
            return Err("cannot start the YAML scanner".into());
        }
        let parser = parser.as_mut_ptr();
        unsafe_libyaml::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as _);
        let result = loop {
            let mut token = std::mem::MaybeUninit::<unsafe_libyaml::yaml_token_t>::uninit();
            if unsafe_libyaml::yaml_parser_scan(parser, token.as_mut_ptr()).fail {
                // A syntax error: the YAML parser reports it with its position.
                break Ok(());
            }
            let token = token.as_mut_ptr();
            let kind = (*token).type_;
            let mark = (*token).start_mark;
            unsafe_libyaml::yaml_token_delete(token);
            let what = match kind {
                unsafe_libyaml::YAML_ANCHOR_TOKEN => Some("an anchor (&name)"),
                unsafe_libyaml::YAML_ALIAS_TOKEN => Some("an alias (*name)"),
                unsafe_libyaml::YAML_STREAM_END_TOKEN | unsafe_libyaml::YAML_NO_TOKEN => {
                    break Ok(())
                }
                _ => None,
            };
            if let Some(what) = what {
                break Err(format!(
                    "YAML anchors and aliases are not accepted: {what} at line {}, column {}",
                    mark.line + 1,
                    mark.column + 1
                ));
            }
        };
        unsafe_libyaml::yaml_parser_delete(parser);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_aliases_are_refused() {
        assert!(refuse_anchors("a: 1\nb: [x, \"&y\", '*z']\n").is_ok());
        let e = refuse_anchors("a: &x 1\nb: *x\n").unwrap_err();
        assert!(e.contains("anchor") && e.contains("line 1"), "{e}");
        let laughs = "a: &a [\"lol\",\"lol\"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n";
        assert!(refuse_anchors(laughs).is_err());
        assert!(refuse_anchors("a: [1,\n").is_ok());
        assert!(refuse_anchors("").is_ok());
    }
}

//! Secrets out of the YAML: `${VAR}` in config values and the `…File`
//! fields, both resolved when a config *file* is loaded (never for a
//! document sent to the admin API, which could otherwise read the
//! gateway's environment or files).
//!
//! - `${NAME}` in a string value is replaced by the variable's value; an
//!   unset variable is an error naming it and the field. `$${` writes a
//!   literal `${`. Keys are never interpolated.
//! - `secretFile`, `tokenFile`, `urlFile` name a file (relative to the
//!   config file's folder) whose content, without its trailing newline,
//!   is the value of `secret`, `token`, `url`. Setting both is an error.
//!
//! When the admin API rewrites the config file (file mode), values that
//! came from a variable or a file are written back as they were written
//! (`${NAME}`, `secretFile: …`), never as the secret itself
//! ([`restore_sources`]).

use super::{ConfigError, FileConfig};
use serde_json::Value;
use std::path::Path;

/// Largest file read for a `…File` field.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Whether `text` uses interpolation at all (a cheap pre-check).
pub fn uses_interpolation(text: &str) -> bool {
    text.contains("${")
}

/// Expands `${NAME}` (and the `$${` escape) in one string; `path` names
/// the field in errors.
pub fn interpolate_str(
    s: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let Some(end) = t.find('}') else {
                return Err(ConfigError::new(
                    path,
                    "unterminated ${…} (write $${ for a literal ${)",
                ));
            };
            let name = &t[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConfigError::new(
                    path,
                    format!("${{{name}}} is not a variable name (letters, digits, _)"),
                ));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(ConfigError::new(
                        path,
                        format!("environment variable {name} is not set"),
                    ))
                }
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

/// Expands every string value of a parsed YAML document (keys untouched).
pub fn interpolate(
    v: &mut serde_yaml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<ConfigError>,
) {
    use serde_yaml::Value as Y;
    match v {
        Y::String(s) if s.contains('$') => match interpolate_str(s, path, lookup) {
            Ok(n) => *s = n,
            Err(e) => errs.push(e),
        },
        Y::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let seg = match k {
                    Y::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                interpolate(x, &join(path, &seg), lookup, errs);
            }
        }
        Y::Sequence(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                interpolate(x, &format!("{path}[{i}]"), lookup, errs);
            }
        }
        Y::Tagged(t) => interpolate(&mut t.value, path, lookup, errs),
        _ => {}
    }
}

/// Reads a `…File` field's file: at most [`MAX_SECRET_FILE`], a regular
/// file, UTF-8, trailing newline trimmed.
fn read_secret_file(base: &Path, field: &str, file: &str) -> Result<String, ConfigError> {
    let p = Path::new(file);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let fail =
        |why: String| ConfigError::new(field, format!("cannot read {}: {why}", full.display()));
    let meta = std::fs::metadata(&full).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(fail(format!("larger than {MAX_SECRET_FILE} bytes")));
    }
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(&full)
        .and_then(|f| f.take(MAX_SECRET_FILE).read_to_string(&mut text))
        .map_err(|e| fail(e.to_string()))?;
    let trimmed = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if trimmed.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    Ok(trimmed.to_string())
}

/// One `x` / `xFile` pair: reads the file into `x` and clears `xFile`.
fn resolve_pair(
    base: &Path,
    path: &str,
    value: &mut Option<String>,
    file: &mut Option<String>,
    errs: &mut Vec<ConfigError>,
) {
    let (vname, fname) = path.rsplit_once('|').unwrap_or((path, path));
    let Some(f) = file.take() else { return };
    if value.is_some() {
        errs.push(ConfigError::new(
            fname,
            format!("set either {vname} or {fname}, not both"),
        ));
        return;
    }
    match read_secret_file(base, fname, &f) {
        Ok(s) => *value = Some(s),
        Err(e) => errs.push(e),
    }
}

/// Reads every `…File` field of a config file (relative paths from
/// `base`, the config file's folder).
pub fn resolve_files(cfg: &mut FileConfig, base: &Path) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let e = &mut errs;
    let a = &mut cfg.admin;
    resolve_pair(
        base,
        "admin.token|admin.tokenFile",
        &mut a.token,
        &mut a.token_file,
        e,
    );
    if let Some(j) = cfg.security.jwt.as_mut() {
        resolve_pair(
            base,
            "security.jwt.secret|security.jwt.secretFile",
            &mut j.secret,
            &mut j.secret_file,
            e,
        );
    }
    for (i, w) in cfg.webhooks.iter_mut().enumerate() {
        let path = format!("webhooks[{i}].secret|webhooks[{i}].secretFile");
        resolve_pair(base, &path, &mut w.secret, &mut w.secret_file, e);
    }
    for (name, section) in [
        ("database", cfg.database.as_mut()),
        ("redis", cfg.redis.as_mut()),
        ("nats", cfg.nats.as_mut()),
        ("rateLimit.redis", cfg.rate_limit.redis.as_mut()),
    ] {
        if let Some(s) = section {
            let path = format!("{name}.url|{name}.urlFile");
            resolve_pair(base, &path, &mut s.url, &mut s.url_file, e);
        }
    }
    errs
}

/// `…File` fields still set after loading: only a config file may use
/// them (checked for every config, including admin API writes).
pub fn unresolved_files(cfg: &FileConfig) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let msg = "is read from the config file only (the admin API cannot read files); send the value itself";
    let mut push = |set: bool, path: String| {
        if set {
            out.push(ConfigError::new(path, msg));
        }
    };
    push(cfg.admin.token_file.is_some(), "admin.tokenFile".into());
    if let Some(j) = &cfg.security.jwt {
        push(j.secret_file.is_some(), "security.jwt.secretFile".into());
    }
    for (i, w) in cfg.webhooks.iter().enumerate() {
        push(w.secret_file.is_some(), format!("webhooks[{i}].secretFile"));
    }
    for (name, s) in [
        ("database", &cfg.database),
        ("redis", &cfg.redis),
        ("nats", &cfg.nats),
        ("rateLimit.redis", &cfg.rate_limit.redis),
    ] {
        push(
            s.as_ref().is_some_and(|s| s.url_file.is_some()),
            format!("{name}.urlFile"),
        );
    }
    out
}

/// Prepares a config about to be written to the config file: values equal
/// to what the file's `${NAME}` or `…File` gave are written back in that
/// form; any other `${` is escaped as `$${` (so a value set through the
/// API is never expanded at the next load).
///
/// `out` is the new config, `raw` the file as written (not expanded) and
/// `resolved` the file as loaded (expanded), all as JSON.
pub fn restore_sources(out: &mut Value, raw: Option<&Value>, resolved: Option<&Value>) {
    match out {
        Value::String(s) => {
            if let Some(Value::String(r)) = raw {
                // Taken from the file as written (boot sections): as is.
                if r == s {
                    return;
                }
                if r.contains("${") && resolved.and_then(Value::as_str) == Some(s.as_str()) {
                    *s = r.clone();
                    return;
                }
            }
            if s.contains("${") {
                *s = s.replace("${", "$${");
            }
        }
        Value::Object(map) => {
            let raw_map = raw.and_then(Value::as_object);
            let res_map = resolved.and_then(Value::as_object);
            if let (Some(rm), Some(sm)) = (raw_map, res_map) {
                for (fk, fv) in rm {
                    let Some(base) = fk.strip_suffix("File") else {
                        continue;
                    };
                    if !matches!(base, "secret" | "token" | "url") || !fv.is_string() {
                        continue;
                    }
                    if map.get(base).is_some() && map.get(base) == sm.get(base) {
                        map.remove(base);
                        map.insert(fk.clone(), fv.clone());
                    }
                }
            }
            for (k, x) in map.iter_mut() {
                if k.ends_with("File") {
                    continue;
                }
                restore_sources(
                    x,
                    raw_map.and_then(|m| m.get(k)),
                    res_map.and_then(|m| m.get(k)),
                );
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                // Entries with an `id` or `name` (webhooks, upstreams,
                // routes) are matched by it, so a deletion before them does
                // not pair them with another entry's source.
                let j = entry_key(x)
                    .and_then(|k| {
                        raw.and_then(Value::as_array)?
                            .iter()
                            .position(|r| entry_key(r) == Some(k))
                    })
                    .unwrap_or(i);
                restore_sources(
                    x,
                    raw.and_then(|r| r.get(j)),
                    resolved.and_then(|r| r.get(j)),
                );
            }
        }
        _ => {}
    }
}

/// The `id` (else `name`) of a list entry.
fn entry_key(v: &Value) -> Option<&str> {
    v.get("id")
        .and_then(Value::as_str)
        .or_else(|| v.get("name").and_then(Value::as_str))
}

/// Shortest admin token accepted (bytes).
pub const MIN_TOKEN_BYTES: usize = 16;

/// Why an admin token is too weak to enable the admin API, if it is.
pub fn weak_token(token: &str) -> Option<String> {
    if token.trim().is_empty() {
        Some("is empty or only whitespace".into())
    } else if token.len() < MIN_TOKEN_BYTES {
        Some(format!(
            "is {} bytes long; at least {MIN_TOKEN_BYTES} are required (e.g. `openssl rand -hex 32`)",
            token.len()
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "A").then(|| "x".to_string())
    }

    #[test]
    fn interpolation_expands_escapes_and_names_the_field() {
        assert_eq!(interpolate_str("a${A}b", "p", &env).unwrap(), "axb");
        assert_eq!(interpolate_str("$${A}", "p", &env).unwrap(), "${A}");
        assert_eq!(interpolate_str("$5 $", "p", &env).unwrap(), "$5 $");
        let e = interpolate_str("${B}", "security.jwt.secret", &env).unwrap_err();
        assert_eq!(e.path, "security.jwt.secret");
        assert!(e.message.contains("B is not set"), "{}", e.message);
        assert!(interpolate_str("${A", "p", &env).is_err());
    }

    #[test]
    fn sources_are_restored_and_literals_escaped() {
        let raw = serde_json::json!({"a": "${A}", "w": [{"secretFile": "s.txt"}]});
        let res = serde_json::json!({"a": "x", "w": [{"secret": "S"}]});
        let mut out = serde_json::json!({"a": "x", "b": "${HOME}", "w": [{"secret": "S"}]});
        restore_sources(&mut out, Some(&raw), Some(&res));
        assert_eq!(
            out,
            serde_json::json!({"a": "${A}", "b": "$${HOME}", "w": [{"secretFile": "s.txt"}]})
        );
        // Matched by id, not position.
        let raw = serde_json::json!({"w": [{"id": "x", "secret": "${X}"}, {"id": "y", "secret": "${Y}"}]});
        let res =
            serde_json::json!({"w": [{"id": "x", "secret": "1"}, {"id": "y", "secret": "2"}]});
        let mut out = serde_json::json!({"w": [{"id": "y", "secret": "2"}]});
        restore_sources(&mut out, Some(&raw), Some(&res));
        assert_eq!(
            out,
            serde_json::json!({"w": [{"id": "y", "secret": "${Y}"}]})
        );
        let raw = serde_json::json!({"a": "${A}", "w": [{"secretFile": "s.txt"}]});
        let res = serde_json::json!({"a": "x", "w": [{"secret": "S"}]});
        // A value copied from the file as written stays as written.
        let mut boot = serde_json::json!({"a": "${A}"});
        restore_sources(&mut boot, Some(&raw), Some(&res));
        assert_eq!(boot, serde_json::json!({"a": "${A}"}));
        let mut changed = serde_json::json!({"a": "y", "w": [{"secret": "T"}]});
        restore_sources(&mut changed, Some(&raw), Some(&res));
        assert_eq!(
            changed,
            serde_json::json!({"a": "y", "w": [{"secret": "T"}]})
        );
    }

    #[test]
    fn weak_tokens() {
        assert!(weak_token("").is_some());
        assert!(weak_token("   ").is_some());
        assert!(weak_token("short").is_some());
        assert!(weak_token("0123456789abcdef").is_none());
    }
}

//! Reading a config text into the model, every problem reported at once.
//!
//! serde stops at the first value it cannot read. So that one answer names
//! every bad value, the reader takes the value serde stopped at out of the
//! document and reads the rest again, until the rest reads; the config
//! read from the rest is then checked like any other ([`Reading::finish`]).
//! Each problem carries its path and, in a file, its line and column.
//! Unknown keys are all collected in the same passes.

use super::{validate, ConfigError, ConfigErrors, FileConfig};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_path_to_error::{Path, Segment};
use serde_yaml::Value;
use std::fmt;

/// Bad values reported from one text at most.
const MAX_VALUE_ERRORS: usize = 100;

/// What could be read of a text.
pub(super) struct Reading {
    /// The config, without the values that could not be read.
    pub config: FileConfig,
    /// Bad values and unknown keys, each with its path.
    pub problems: Vec<ConfigError>,
    /// Keys were unknown. A misspelt key usually holds a value that is
    /// there under the wrong name: checking the rest would call it missing.
    unknown_keys: bool,
    /// Every bad value could be taken out: `config` is the whole rest.
    complete: bool,
}

impl Reading {
    /// The config when nothing was wrong. Otherwise every problem: the
    /// reading's, then (when the rest is whole and no key was unknown)
    /// what validation finds in the rest, except at the paths of problems
    /// already reported (a value taken out is not "missing" as well).
    pub fn finish(self) -> Result<FileConfig, ConfigErrors> {
        if self.problems.is_empty() {
            return Ok(self.config);
        }
        let mut problems = self.problems;
        if self.complete && !self.unknown_keys {
            let more: Vec<ConfigError> = validate::validate(&self.config)
                .into_iter()
                .filter(|e| !problems.iter().any(|p| related(&p.path, &e.path)))
                .collect();
            problems.extend(more);
        }
        Err(ConfigErrors(problems))
    }
}

/// True when one path is the other or lies inside it (`a.b` and `a.b[1].c`).
fn related(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.strip_prefix(short)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Reads `text`. `Err` only for text that is not YAML (a syntax error:
/// nothing can be read). `positions`: the messages give the line and
/// column of each bad value in `text`.
pub(super) fn read(text: &str, positions: bool) -> Result<Reading, ConfigErrors> {
    if text.trim().is_empty() {
        return Ok(Reading {
            config: FileConfig::default(),
            problems: Vec::new(),
            unknown_keys: false,
            complete: true,
        });
    }
    let first = match pass(serde_yaml::Deserializer::from_str(text)) {
        Ok(read) => return Ok(read),
        Err(bad) => bad,
    };
    let Ok(mut doc) = serde_yaml::from_str::<Value>(text) else {
        // Not YAML: serde's message says where (with the path it reached).
        let path = yaml_path(&first.path.to_string());
        let path = if path == "." { String::new() } else { path };
        return Err(ConfigErrors(vec![ConfigError::new(
            path,
            first.error.to_string(),
        )]));
    };
    let mut problems: Vec<ConfigError> = Vec::new();
    loop {
        let bad = match pass(doc.clone()) {
            Ok(mut read) => {
                problems.append(&mut read.problems);
                read.problems = problems;
                return Ok(read);
            }
            Err(bad) => bad,
        };
        let segments: Vec<Segment> = bad.path.iter().cloned().collect();
        let path = yaml_path(&bad.path.to_string());
        let mut message = bad.error.to_string();
        if let Some((line, column)) = positions.then(|| locate(text, &segments)).flatten() {
            message = format!("{message} at line {line} column {column}");
        }
        let repeated = problems.iter().any(|p| p.path == path);
        problems.push(ConfigError::new(
            if path == "." { String::new() } else { path },
            message,
        ));
        if repeated || problems.len() >= MAX_VALUE_ERRORS || !take_out(&mut doc, &segments) {
            return Ok(Reading {
                config: FileConfig::default(),
                problems,
                unknown_keys: false,
                complete: false,
            });
        }
    }
}

/// Where one pass stopped.
struct Stop {
    path: Path,
    error: serde_yaml::Error,
}

/// One deserialisation of the whole document.
fn pass<'de, D>(de: D) -> Result<Reading, Stop>
where
    D: Deserializer<'de, Error = serde_yaml::Error>,
{
    let mut unknown: Vec<String> = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let ignored = serde_ignored::Deserializer::new(de, &mut on_unknown);
    let config: FileConfig = serde_path_to_error::deserialize(ignored).map_err(|e| Stop {
        path: e.path().clone(),
        error: e.into_inner(),
    })?;
    Ok(Reading {
        config,
        unknown_keys: !unknown.is_empty(),
        problems: unknown
            .iter()
            .map(|p| ConfigError::new(yaml_path(p), "unknown key"))
            .collect(),
        complete: true,
    })
}

/// Takes the value at `path` out of `doc`: the key holding it, or, for an
/// item of a list, the key holding the list (an item taken out would move
/// the later ones, and their paths with them). False when nothing could be
/// taken out.
fn take_out(doc: &mut Value, path: &[Segment]) -> bool {
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Segment::Map { .. })) else {
        return false;
    };
    let mut node = doc;
    for seg in &path[..last_key] {
        let next = match (seg, node) {
            (Segment::Map { key }, Value::Mapping(m)) => m
                .iter_mut()
                .find(|(k, _)| key_text(k) == *key)
                .map(|(_, v)| v),
            (Segment::Seq { index }, Value::Sequence(s)) => s.get_mut(*index),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    let (Segment::Map { key }, Value::Mapping(m)) = (&path[last_key], node) else {
        return false;
    };
    let found = m.keys().find(|k| key_text(k) == *key).cloned();
    found.is_some_and(|k| m.shift_remove(&k).is_some())
}

/// A mapping key as serde's path shows it.
fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// The line and column (1-based) of the value at `path` in `text`.
fn locate(text: &str, path: &[Segment]) -> Option<(usize, usize)> {
    let error = Seek(path)
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .err()?;
    if !error.to_string().contains(HERE) {
        return None;
    }
    error.location().map(|l| (l.line(), l.column()))
}

/// The error [`Seek`] stops with at the value it looks for (its position
/// is that value's).
const HERE: &str = "flexgate: the value sought";

/// Walks a document down `path`, reading nothing else.
struct Seek<'p>(&'p [Segment]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Seek<'_> {
    fn end<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(if self.0.is_empty() {
            HERE
        } else {
            "not there"
        }))
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Map { key }, rest)) = self.0.split_first() else {
            return self.end();
        };
        while let Some(k) = map.next_key::<String>()? {
            if k == *key {
                return map.next_value_seed(Seek(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(de::Error::custom("not there"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Seq { index }, rest)) = self.0.split_first() else {
            return self.end();
        };
        for _ in 0..*index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom("not there"));
            }
        }
        match seq.next_element_seed(Seek(rest))? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom("not there")),
        }
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.end()
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.end()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.end()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.end()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.end()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.end()
    }
}

/// `routes.1.upstream` / `routes[1].upstream` → `routes[1].upstream`.
pub(super) fn yaml_path(dotted: &str) -> String {
    let mut out = String::with_capacity(dotted.len() + 4);
    for seg in dotted.split('.') {
        if seg.is_empty() || seg == "?" {
            continue;
        }
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match read(text, true).unwrap().finish() {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn every_bad_value_is_reported_with_its_position() {
        let got = problems(
            "upstreams:\n  - name: a\n    url: ftp://x\n    loadBalancing: rr\n    retries: lots\n\
             routes:\n  - path: nope\n    upstream: a\n    methods: [GET, GRAB]\n",
        );
        assert_eq!(
            got,
            [
                "upstreams[0].url: \"ftp://x\" must start with http:// or https:// at line 3 column 10",
                "upstreams[0].loadBalancing: \"rr\" is not one of roundRobin, weighted, consistentHash, leastConnections, p2c, random at line 4 column 20",
                "upstreams[0].retries: invalid type: string \"lots\", expected u32 at line 5 column 14",
                "routes[0].path: \"nope\" must start with / at line 7 column 11",
                "routes[0].methods[1]: \"GRAB\" is not an HTTP method (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE) at line 9 column 20",
            ],
            "the url taken out is not reported missing as well"
        );
    }

    #[test]
    fn the_rest_is_checked_too() {
        let got = problems(
            "upstreams:\n  - name: a\n    url: http://127.0.0.1:9\n    hashKey: cookie\n\
             routes:\n  - path: /a\n    upstream: b\n",
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("upstreams[0].hashKey: \"cookie\" is not"));
        assert_eq!(got[1], "routes[0].upstream: unknown upstream \"b\"");
    }

    #[test]
    fn unknown_keys_are_reported_without_the_rest() {
        let got = problems("routes:\n  - path: /a\n    upstrem: x\n    auth: maybe\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("routes[0].auth: \"maybe\" is not one of required"));
        assert_eq!(got[1], "routes[0].upstrem: unknown key");
    }

    #[test]
    fn syntax_errors_stop_reading() {
        let e = read("upstreams:\n  - name: a\n    timeout: [1\n", true)
            .err()
            .unwrap();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("line"), "{}", e.0[0]);
    }

    #[test]
    fn paths_relate_at_segment_boundaries() {
        assert!(related("routes[1].path", "routes[1].path"));
        assert!(related("security.jwt", "security.jwt.secretFile"));
        assert!(related("routes[1]", "routes[1].path"));
        assert!(!related("routes[1]", "routes[10].path"));
    }
}

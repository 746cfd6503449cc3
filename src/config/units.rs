//! Human-friendly units used across the config: durations and byte sizes.
//!
//! The original project wrote durations as plain milliseconds (`timeout: 5000`,
//! `windowMs: 60000`) and sizes as strings (`maxBodySize: "10mb"`). Both forms
//! are accepted everywhere: a number is milliseconds (durations) or bytes
//! (sizes); a string carries its unit (`"30s"`, `"500ms"`, `"2m"`, `"10mb"`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as milliseconds (number) or with a unit (`"30s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// The value as a [`Duration`].
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// A byte size written as a number of bytes or with a unit (`"10mb"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"` or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?} (expected e.g. 5000, \"500ms\", \"30s\", \"2m\")")
    })?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(Millis(n.saturating_mul(factor)))
}

/// Parses `"10mb"`, `"512kb"`, `"1gb"`, `"100b"` or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<ByteSize, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {text:?} (expected e.g. 1048576, \"512kb\", \"10mb\")")
    })?;
    let factor = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?} (use b, kb, mb or gb)"
            ))
        }
    };
    Ok(ByteSize(n.saturating_mul(factor)))
}

/// Largest accepted value of either unit (about 31,700 years in ms, 888 TiB).
pub const MAX_UNIT_VALUE: u64 = 1_000_000_000_000_000;

fn bounded<E: serde::de::Error>(n: u64, what: &str) -> Result<u64, E> {
    if n > MAX_UNIT_VALUE {
        Err(E::custom(format!(
            "{what} {n} is too large (at most {MAX_UNIT_VALUE})"
        )))
    } else {
        Ok(n)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => n,
            NumOrText::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom)?.0,
        };
        bounded(ms, "duration").map(Millis)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = match NumOrText::deserialize(d)? {
            NumOrText::Num(n) => n,
            NumOrText::Text(t) => parse_size(&t).map_err(serde::de::Error::custom)?.0,
        };
        bounded(bytes, "size").map(ByteSize)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

fn number_or_text_schema(
    number: &str,
    text: &str,
    pattern: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(MAX_UNIT_VALUE))
                .description(Some(number)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
                .description(Some(text)),
        )
        .into()
}

impl utoipa::PartialSchema for Millis {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        number_or_text_schema(
            "milliseconds",
            "a duration with its unit: \"500ms\", \"30s\", \"2m\", \"1h\"",
            r"^\s*[0-9]{1,9}\s*([mM][sS]|[sSmMhH])?\s*$",
        )
    }
}

impl utoipa::ToSchema for Millis {}

impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        number_or_text_schema(
            "bytes",
            "a size with its unit: \"512kb\", \"10mb\", \"1gb\"",
            r"^\s*[0-9]{1,6}\s*([bB]|[kKmMgG]([iI]?[bB])?)?\s*$",
        )
    }
}

impl utoipa::ToSchema for ByteSize {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_original_and_unit_forms() {
        assert_eq!(parse_duration("5000").unwrap(), Millis(5000));
        assert_eq!(parse_duration("60s").unwrap(), Millis(60_000));
        assert_eq!(parse_duration("2m").unwrap(), Millis(120_000));
        assert_eq!(parse_duration("250ms").unwrap(), Millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn sizes_accept_original_forms() {
        assert_eq!(parse_size("10mb").unwrap(), ByteSize(10 << 20));
        assert_eq!(parse_size("512KB").unwrap(), ByteSize(512 << 10));
        assert_eq!(parse_size("100").unwrap(), ByteSize(100));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("10xb").is_err());
    }
}

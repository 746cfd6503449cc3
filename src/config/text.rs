//! Values written as text in a config, parsed once: when the config is read.
//!
//! [`FromText`] is how a type reads itself from the text of a YAML or JSON
//! scalar; its error says what is wrong with the value (the reader adds the
//! path, and the position in a file). [`Written<T>`] keeps the text beside
//! the value, so that a config is written back (export, `GET /api/config`,
//! the stores) as it was written. [`text_enum!`] declares a closed set of
//! names, refused with the list of accepted ones. Nothing downstream parses
//! these strings again: validation and the snapshot compiler read the values.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// A type read from the text of a config value.
pub trait FromText: Sized {
    /// The value, or why the text is not one (without the path: the reader
    /// adds it). A message may quote the text unless it can be a secret.
    fn from_text(text: &str) -> Result<Self, String>;

    /// What is expected, for a value that is not text at all (`invalid type:
    /// sequence, expected …`).
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Reads a `T` from a string scalar. The error is raised while the scalar
/// is read, so a YAML error carries the scalar's own position.
struct TextVisitor<T>(PhantomData<T>);

impl<T: FromText> Visitor<'_> for TextVisitor<T> {
    type Value = Written<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        T::expecting(f)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Written<T>, E> {
        Written::parse(text).map_err(E::custom)
    }
}

/// Deserialises any [`FromText`] type (the enums of [`text_enum!`] use it).
pub fn deserialize_text<'de, D: Deserializer<'de>, T: FromText>(d: D) -> Result<T, D::Error> {
    Ok(d.deserialize_str(TextVisitor::<T>(PhantomData))?.value)
}

/// A value with the text it was written as. Compared, ordered, hashed,
/// shown and serialised as that text; [`value`](Written::value) is the
/// parsed value. Dereferences to the text, so code that only looks at the
/// text (messages, comparisons) reads it as the string it is. In the
/// OpenAPI document it is a string (`#[schema(value_type = String)]`).
#[derive(Clone)]
pub struct Written<T> {
    text: String,
    value: T,
}

impl<T> Written<T> {
    /// The parsed value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<T: FromText> Written<T> {
    /// Parses `text` (what the config reader does).
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Written {
            value: T::from_text(text)?,
            text: text.to_string(),
        })
    }
}

impl<T: FromText> std::str::FromStr for Written<T> {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Written::parse(text)
    }
}

impl<T> std::ops::Deref for Written<T> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl<T> AsRef<str> for Written<T> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl<T> PartialEq for Written<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Written<T> {}

impl<T> PartialEq<str> for Written<T> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<T> PartialEq<&str> for Written<T> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<T> PartialOrd for Written<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Written<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<T> std::hash::Hash for Written<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}

impl<T> fmt::Debug for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<T> fmt::Display for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> Serialize for Written<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, T: FromText> Deserialize<'de> for Written<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor(PhantomData))
    }
}

/// A closed set of names (`loadBalancing: roundRobin`): an enum read and
/// written as its names, a name outside the set refused with the list of
/// the accepted ones (`"rr" is not one of roundRobin, weighted, …`).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
        $vis enum $name {
            $( $(#[$vmeta])* #[schema(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in the order of the documentation.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name of the value in a config.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl $crate::config::text::FromText for $name {
            fn from_text(text: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .find(|v| v.as_str() == text)
                    .copied()
                    .ok_or_else(|| $crate::config::text::not_one_of(text, $name::ALL.iter().map(|v| v.as_str())))
            }

            fn expecting(f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::config::text::one_of(f, $name::ALL.iter().map(|v| v.as_str()))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::text::deserialize_text(d)
            }
        }
    };
}
pub(crate) use text_enum;

/// `"x" is not one of a, b, c`.
pub fn not_one_of<'a>(text: &str, names: impl Iterator<Item = &'a str>) -> String {
    format!(
        "{text:?} is not one of {}",
        names.collect::<Vec<_>>().join(", ")
    )
}

/// `one of a, b, c` (what a type error expected).
pub fn one_of<'a>(f: &mut fmt::Formatter<'_>, names: impl Iterator<Item = &'a str>) -> fmt::Result {
    write!(f, "one of {}", names.collect::<Vec<_>>().join(", "))
}

/// `listen: "0.0.0.0:3000"` or `listen: ["0.0.0.0:3000", "[::]:3000"]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T = String> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The listed values.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Not `#[serde(untagged)]`: an untagged enum replaces the error of a bad
/// item by "did not match any variant"; this keeps it, with its path
/// (`proxy.listen[1]`).
impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(OneOrMany::One)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Written as text in either form: a string, or a list of strings.
impl<T> utoipa::PartialSchema for OneOrMany<T> {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        let text = || ObjectBuilder::new().schema_type(Type::String);
        OneOfBuilder::new()
            .item(text())
            .item(ArrayBuilder::new().items(text()))
            .description(Some(
                "`listen: \"0.0.0.0:3000\"` or `listen: [\"0.0.0.0:3000\", \"[::]:3000\"]`.",
            ))
            .into()
    }
}

impl<T> utoipa::ToSchema for OneOrMany<T> {
    fn name() -> std::borrow::Cow<'static, str> {
        "OneOrMany".into()
    }
}

/// Deserialises a map whose keys are [`Written`] values (header names),
/// reporting a bad key at the entry's own path (`add.Bad Name`) rather
/// than at the map's: the key is checked while its value is read.
pub fn keyed_map<'de, D, K, V>(d: D) -> Result<BTreeMap<Written<K>, V>, D::Error>
where
    D: Deserializer<'de>,
    K: FromText,
    V: Deserialize<'de>,
{
    struct Entries<K, V>(PhantomData<(K, V)>);
    impl<'de, K: FromText, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
        type Value = BTreeMap<Written<K>, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(text) = map.next_key::<String>()? {
                let (key, value) = map.next_value_seed(Entry::<K, V>(&text, PhantomData))?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    /// The value of an entry, read after its key is checked.
    struct Entry<'k, K, V>(&'k str, PhantomData<(K, V)>);
    impl<'de, K: FromText, V: Deserialize<'de>> de::DeserializeSeed<'de> for Entry<'_, K, V> {
        type Value = (Written<K>, V);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let key = Written::parse(self.0).map_err(de::Error::custom)?;
            Ok((key, V::deserialize(d)?))
        }
    }
    d.deserialize_map(Entries(PhantomData))
}

// Plain types read from text.

impl FromText for SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| {
            format!("{text:?} is not an address like \"0.0.0.0:3000\" or \"[::]:3000\"")
        })
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address like \"0.0.0.0:3000\" or \"[::]:3000\"")
    }
}

/// An address or a CIDR (`10.0.0.0/8`, `169.254.169.254`, `fd00:ec2::254`),
/// host bits cleared.
pub type Cidr = Written<ipnet::IpNet>;

impl FromText for ipnet::IpNet {
    fn from_text(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Ok(net) = t.parse::<ipnet::IpNet>() {
            return Ok(net.trunc());
        }
        t.parse::<IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an IP address or a CIDR (\"10.0.0.0/8\")")
    }
}

impl FromText for http::HeaderName {
    fn from_text(text: &str) -> Result<Self, String> {
        http::HeaderName::from_bytes(text.as_bytes()).map_err(|_| "invalid header name".into())
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header name")
    }
}

impl FromText for http::HeaderValue {
    fn from_text(text: &str) -> Result<Self, String> {
        http::HeaderValue::from_str(text)
            .map_err(|_| "invalid header value (control characters are not allowed)".into())
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header value")
    }
}

/// The methods a route may list (`TRACE` too: a route must list it).
const METHODS: [http::Method; 8] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
    http::Method::OPTIONS,
    http::Method::TRACE,
];

/// One of [`METHODS`], in any case (`get` is `GET`).
impl FromText for http::Method {
    fn from_text(text: &str) -> Result<Self, String> {
        METHODS
            .iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(text))
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = METHODS.iter().map(|m| m.as_str()).collect();
                format!("{text:?} is not an HTTP method ({})", names.join(", "))
            })
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an HTTP method")
    }
}

/// An HTTP token (RFC 9110: letters, digits and ``!#$%&'*+-.^_`|~``).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token;

/// True when `s` is a non-empty HTTP token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FromText for Token {
    fn from_text(text: &str) -> Result<Self, String> {
        if is_token(text) {
            Ok(Token)
        } else {
            Err("must be a token (letters, digits, -._)".into())
        }
    }
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token (letters, digits, -._)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    text_enum! {
        /// Test names.
        enum Colour {
            Red = "red",
            DarkBlue = "darkBlue",
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        colour: Option<Colour>,
        net: Option<Cidr>,
        listen: Option<OneOrMany<Written<SocketAddr>>>,
        #[serde(default, deserialize_with = "keyed_map")]
        headers: BTreeMap<Written<http::HeaderName>, Written<http::HeaderValue>>,
    }

    fn error_of(yaml: &str) -> (String, String) {
        let de = serde_yaml::Deserializer::from_str(yaml);
        let e = serde_path_to_error::deserialize::<_, Doc>(de).unwrap_err();
        (e.path().to_string(), e.into_inner().to_string())
    }

    #[test]
    fn names_are_refused_with_the_accepted_ones_at_their_position() {
        let (path, msg) = error_of("colour: blue\n");
        assert_eq!(path, "colour");
        assert_eq!(
            msg,
            "colour: \"blue\" is not one of red, darkBlue at line 1 column 9"
        );
        let (_, msg) = error_of("colour: [red]\n");
        assert!(msg.contains("expected one of red, darkBlue"), "{msg}");
        let doc: Doc = serde_yaml::from_str("colour: darkBlue\n").unwrap();
        assert_eq!(doc.colour, Some(Colour::DarkBlue));
        assert_eq!(
            serde_json::to_string(&Colour::DarkBlue).unwrap(),
            "\"darkBlue\""
        );
    }

    #[test]
    fn written_values_keep_their_text() {
        let doc: Doc = serde_yaml::from_str(
            "net: 10.1.2.3/8\nlisten: [\"127.0.0.1:80\", \"[::1]:81\"]\nheaders: {X-A: b}\n",
        )
        .unwrap();
        let net = doc.net.unwrap();
        assert_eq!(net, "10.1.2.3/8");
        assert_eq!(net.value().to_string(), "10.0.0.0/8");
        assert_eq!(serde_json::to_string(&net).unwrap(), "\"10.1.2.3/8\"");
        assert_eq!(doc.listen.unwrap().to_vec()[1].value().port(), 81);
        let (name, value) = doc.headers.iter().next().unwrap();
        assert_eq!((name.as_str(), name.value().as_str()), ("X-A", "x-a"));
        assert_eq!(value.value(), "b");
    }

    #[test]
    fn a_bad_item_or_key_is_reported_at_its_own_path() {
        let (path, msg) = error_of("listen: [\"127.0.0.1:80\", \"x\"]\n");
        assert_eq!(path, "listen[1]");
        assert!(msg.contains("\"x\" is not an address like"), "{msg}");
        let (path, msg) = error_of("listen: nope\n");
        assert_eq!(path, "listen");
        assert!(msg.contains("\"nope\" is not an address"), "{msg}");
        let (path, msg) = error_of("headers:\n  Bad Name: x\n");
        assert_eq!(path, "headers.Bad Name");
        assert!(msg.contains("invalid header name"), "{msg}");
        let (path, _) = error_of("net: 10.0.0.0/33\n");
        assert_eq!(path, "net");
    }

    #[test]
    fn cidrs_accept_plain_addresses() {
        assert!(ipnet::IpNet::from_text("169.254.169.254")
            .unwrap()
            .contains(&"169.254.169.254".parse::<IpAddr>().unwrap()));
        assert!(ipnet::IpNet::from_text("fd00:ec2::254").is_ok());
        assert!(ipnet::IpNet::from_text("10.0.0.0/8")
            .unwrap()
            .contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert!(ipnet::IpNet::from_text("10.0.0.0/33").is_err());
    }

    #[test]
    fn methods_in_any_case() {
        let m: Written<http::Method> = "get".parse().unwrap();
        assert_eq!((m.as_str(), m.value()), ("get", &http::Method::GET));
        let e = "GRAB".parse::<Written<http::Method>>().unwrap_err();
        assert!(
            e.starts_with("\"GRAB\" is not an HTTP method (GET, HEAD"),
            "{e}"
        );
    }
}

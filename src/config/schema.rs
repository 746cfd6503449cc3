//! The JSON Schema of `flexgate.yaml` (`flexgate schema`), generated from
//! the config model's types and their doc comments, so editors validate and
//! complete what the gateway reads. Shipped as `conf/flexgate.schema.json`
//! (a test fails when it is stale); `flexgate init` points new files at it
//! with a `yaml-language-server` comment.
//!
//! JSON Schema 2020-12: the model's schemas (OpenAPI 3.1 flavoured, which
//! is JSON Schema) under `$defs`, every object closed to unknown keys, as
//! the reader refuses them.

use super::model::FileConfig;
use serde_json::{json, Value};
use utoipa::{PartialSchema, ToSchema};

/// The schema's `$id`.
pub const ID: &str = "https://flexgate.dev/schema/flexgate.schema.json";
/// The file `flexgate init` writes beside a new config.
pub const FILE_NAME: &str = "flexgate.schema.json";

/// The schema document, as pretty JSON with a final newline.
pub fn document() -> String {
    let mut named = Vec::new();
    <FileConfig as ToSchema>::schemas(&mut named);
    let mut defs = serde_json::Map::new();
    for (name, schema) in named {
        defs.insert(name, serde_json::to_value(schema).unwrap_or(Value::Null));
    }
    let mut root =
        serde_json::to_value(<FileConfig as PartialSchema>::schema()).unwrap_or(Value::Null);
    let mut doc = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": ID,
        "title": "FlexGate configuration (flexgate.yaml)",
    });
    if let (Value::Object(d), Value::Object(r)) = (&mut doc, &mut root) {
        d.extend(std::mem::take(r));
        d.insert("$defs".into(), Value::Object(defs));
    }
    adapt(&mut doc);
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// OpenAPI references become `$defs` ones, and objects with declared
/// properties refuse other keys.
fn adapt(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    *r = format!("#/$defs/{name}");
                }
            }
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(adapt);
        }
        Value::Array(items) => items.iter_mut().for_each(adapt),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_objects_are_closed() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let defs = doc["$defs"].as_object().unwrap();
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let target = &r[..r.find('"').unwrap()];
            let name = target.strip_prefix("#/$defs/").expect(target);
            assert!(defs.contains_key(name), "{target} is not defined");
        }
        assert_eq!(doc["additionalProperties"], false);
        assert!(doc["properties"]["webhooks"].is_object());
    }
}

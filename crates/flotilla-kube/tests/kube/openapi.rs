//! A small, strict OpenAPI v3 validator for Kubernetes structural schemas, enough
//! for CRD `openAPIV3Schema`s: type, nullable, properties, required,
//! additionalProperties, x-kubernetes-preserve-unknown-fields,
//! x-kubernetes-int-or-string, enum, items, min/maxItems, min/maxProperties,
//! min/maxLength, minimum/maximum, format (int32, int64, date-time), oneOf, anyOf,
//! allOf, not. Unknown fields are errors (the API server's strict field validation),
//! not silently pruned. Not evaluated: `pattern` (no such keyword in the kinds we
//! render) and the CEL rules in `x-kubernetes-validations`, which the Istio tests
//! check by hand for the rules that concern rendered objects.

use serde_json::Value;
use std::collections::BTreeMap;

/// Validates `value` against `schema`; every problem is one string naming its path.
pub(crate) fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let get = |k: &str| schema.get(k);
    if value.is_null() && get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    let int_or_string = get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if int_or_string && !(value.is_i64() || value.is_u64() || value.is_string()) {
        errors.push(format!(
            "{path}: expected an integer or a string, got {value}"
        ));
        return;
    }
    if let Some(Value::String(t)) = get("type") {
        let ok = match t.as_str() {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: expected {t}, got {value}"));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = get("enum")
        && !allowed.contains(value)
    {
        errors.push(format!(
            "{path}: {value} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    let num = |k: &str| get(k).and_then(Value::as_f64);
    if let Some(v) = value.as_f64() {
        if let Some(min) = num("minimum")
            && v < min
        {
            errors.push(format!("{path}: {value} is below the minimum {min}"));
        }
        if let Some(max) = num("maximum")
            && v > max
        {
            errors.push(format!("{path}: {value} is above the maximum {max}"));
        }
        let range = match get("format").and_then(Value::as_str) {
            Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
            Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
            _ => None,
        };
        if let Some((lo, hi)) = range
            && !(lo..=hi).contains(&v)
        {
            errors.push(format!("{path}: {value} is out of range for its format"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as f64;
        if num("maxLength").is_some_and(|m| len > m) {
            errors.push(format!("{path}: longer than maxLength"));
        }
        if num("minLength").is_some_and(|m| len < m) {
            errors.push(format!("{path}: shorter than minLength"));
        }
        if get("format").and_then(Value::as_str) == Some("date-time")
            && !(s.len() >= 20 && s.as_bytes().get(10) == Some(&b'T'))
        {
            errors.push(format!("{path}: {s:?} is not an RFC 3339 date-time"));
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as f64;
        if num("maxItems").is_some_and(|m| n > m) {
            errors.push(format!("{path}: more than maxItems items"));
        }
        if num("minItems").is_some_and(|m| n < m) {
            errors.push(format!("{path}: fewer than minItems items"));
        }
        if let Some(item_schema) = get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(map) = value.as_object() {
        let n = map.len() as f64;
        if num("maxProperties").is_some_and(|m| n > m) {
            errors.push(format!("{path}: more than maxProperties fields"));
        }
        if num("minProperties").is_some_and(|m| n < m) {
            errors.push(format!("{path}: fewer than minProperties fields"));
        }
        if let Some(Value::Array(required)) = get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    errors.push(format!("{path}.{r}: required"));
                }
            }
        }
        // Keywords that only constrain (required lists inside oneOf and the like)
        // say nothing about which fields exist; only a schema that describes fields
        // or preserves unknown ones makes fields known.
        let properties = get("properties").and_then(Value::as_object);
        let additional = get("additionalProperties");
        let preserve = get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let describes_fields = properties.is_some() || additional.is_some() || preserve;
        if describes_fields || get("type").and_then(Value::as_str) == Some("object") {
            for (k, v) in map {
                let child = format!("{path}.{k}");
                match (properties.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => validate(s, v, &child, errors),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(s @ Value::Object(_))) => validate(s, v, &child, errors),
                    _ if preserve => {}
                    _ => errors.push(format!("{child}: unknown field")),
                }
            }
        }
    }
    let matches = |s: &Value| {
        let mut e = Vec::new();
        validate(s, value, path, &mut e);
        e.is_empty()
    };
    if let Some(Value::Array(options)) = get("oneOf") {
        let n = options.iter().filter(|s| matches(s)).count();
        if n != 1 {
            errors.push(format!(
                "{path}: matches {n} of the oneOf alternatives, not exactly one"
            ));
        }
    }
    if let Some(Value::Array(options)) = get("anyOf")
        && !options.iter().any(matches)
    {
        errors.push(format!("{path}: matches none of the anyOf alternatives"));
    }
    if let Some(Value::Array(all)) = get("allOf") {
        for s in all {
            validate(s, value, path, errors);
        }
    }
    if let Some(not) = get("not")
        && matches(not)
    {
        errors.push(format!("{path}: matches a schema it must not"));
    }
}

/// Object metadata as the API server accepts it from a client (the fields a
/// manifest may set), with label values checked as Kubernetes does.
fn validate_metadata(meta: &Value, errors: &mut Vec<String>) {
    let Some(map) = meta.as_object() else {
        errors.push(".metadata: expected object".into());
        return;
    };
    for (k, v) in map {
        match k.as_str() {
            "name" | "namespace" | "generateName" => {
                if !v.is_string() {
                    errors.push(format!(".metadata.{k}: expected string"));
                }
            }
            "labels" | "annotations" => {
                for (lk, lv) in v.as_object().into_iter().flatten() {
                    let Some(s) = lv.as_str() else {
                        errors.push(format!(".metadata.{k}.{lk}: expected string, got {lv}"));
                        continue;
                    };
                    let label_ok = s.len() <= 63
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        && (s.is_empty()
                            || (s.as_bytes()[0].is_ascii_alphanumeric()
                                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()));
                    if k == "labels" && !label_ok {
                        errors.push(format!(
                            ".metadata.labels.{lk}: {s:?} is not a valid label value"
                        ));
                    }
                }
            }
            _ => errors.push(format!(".metadata.{k}: unknown field")),
        }
    }
    if !map.contains_key("name") {
        errors.push(".metadata.name: required".into());
    }
}

/// The CRDs of a file, by (apiVersion, kind), with their `openAPIV3Schema`s.
#[derive(Debug)]
pub(crate) struct Crds(BTreeMap<(String, String), Value>);

impl Crds {
    pub(crate) fn load(yaml: &str) -> Crds {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("the CRD file parses");
        let mut schemas = BTreeMap::new();
        for crd in docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
        {
            let group = crd["spec"]["group"].as_str().expect("a CRD has a group");
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .expect("a CRD has a kind");
            for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
                let v = version["name"].as_str().expect("a version has a name");
                schemas.insert(
                    (format!("{group}/{v}"), kind.to_owned()),
                    version["schema"]["openAPIV3Schema"].clone(),
                );
            }
        }
        Crds(schemas)
    }

    pub(crate) fn istio() -> Crds {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/schemas/istio-crds.yaml"
        );
        let text =
            std::fs::read_to_string(path).expect("deploy/schemas/istio-crds.yaml is readable");
        Crds::load(&text)
    }

    /// The problems of one object; empty when it is valid.
    pub(crate) fn check(&self, object: &Value) -> Vec<String> {
        let api = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let Some(schema) = self.0.get(&(api.clone(), kind.clone())) else {
            return vec![format!("no CRD schema for {api} {kind}")];
        };
        let mut errors = Vec::new();
        // The root schema lists spec and status; apiVersion, kind and metadata are
        // implicit in every CRD.
        let mut rest = object.clone();
        if let Some(m) = rest.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
            match m.remove("metadata") {
                Some(meta) => validate_metadata(&meta, &mut errors),
                None => errors.push(".metadata: required".into()),
            }
        }
        validate(schema, &rest, "", &mut errors);
        errors
    }
}

//! What `kubectl apply -f -` reads: multi-document YAML, or one JSON `v1/List`.

use serde_json::Value;

/// Writing the objects failed (the serializer refused a value).
#[derive(Debug, thiserror::Error)]
#[error("writing manifests as YAML: {0}")]
pub struct OutputError(String);

/// The objects as YAML documents separated by `---`, in order, ending with a newline.
pub fn to_yaml(objects: &[Value]) -> Result<String, OutputError> {
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc = serde_saphyr::to_string(object).map_err(|e| OutputError(e.to_string()))?;
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The objects as one `v1/List`, pretty-printed, which kubectl applies item by item.
pub fn to_json(objects: &[Value]) -> String {
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    // Serializing a Value built from Values cannot fail (no non-string keys).
    let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
    s.push('\n');
    s
}

//! What `flotilla ctl apply -f FILE` reads: workloads and tenant policies, in YAML or
//! TOML, checked completely before anything is sent.
//!
//! # Schema
//!
//! A `.toml` file holds `[[workloads]]` and `[[policies]]` tables, as federation files
//! do. A `.yaml`/`.yml` file (or `-` for standard input, read as YAML) holds one or
//! more documents separated by `---` lines; each document is one of:
//!
//! - a mapping with `workloads:` and/or `policies:` lists (the TOML file's shape);
//! - one workload: `kind: Workload` and the workload's fields;
//! - one policy: `kind: TenantPolicy`, `tenant:` and `approved_models:`.
//!
//! A workload's fields: `name`, `model`, `replicas: {min, max}`, `gpu: {count,
//! min_memory_mib, models, mig_profile}`, `constraints: {regions, clusters, pinned,
//! spread_across_clusters, preferred_regions: [{region, weight}]}`, `priority`,
//! `slo: {ttft, e2e}`, `mobility: {movable, min_dwell}`, `container: {image, args,
//! env: {NAME: value}, secret_env: {NAME: {secret, key}}, ports: [{name,
//! container_port, protocol}], health_path, resources: {requests, limits}}` (what a
//! replica runs on Kubernetes; credentials only as `secret_env` references). Durations
//! are strings with a unit (`"30s"`, `"5m"`) or milliseconds. Unknown fields are errors, so a typo is
//! never silently ignored. `deploy/examples/workloads.yaml` and
//! `deploy/examples/policies.yaml` show every form.
//!
//! Errors name the file, the document and its first line, the YAML line and column
//! where the parser has them, and the field.

use flotilla_core::{TenantPolicy, Workload};
use serde::Deserialize;
use std::fmt;

/// Everything one file asks for, in file order.
#[derive(Debug, Default, PartialEq)]
pub struct ApplySet {
    pub workloads: Vec<Workload>,
    pub policies: Vec<TenantPolicy>,
    /// The etags documents carried: their writes are made only if the object is
    /// still at that etag.
    pub etags: Etags,
}

/// Etags by workload name and by tenant.
#[derive(Debug, Default, PartialEq)]
pub struct Etags {
    pub workloads: std::collections::BTreeMap<String, String>,
    pub policies: std::collections::BTreeMap<String, String>,
}

/// A file that does not parse or validate: `location` says which file and document.
#[derive(Debug, PartialEq, Eq)]
pub struct FileError {
    pub location: String,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    /// The format a file name says; `-` (standard input) is YAML.
    pub fn of(path: &std::path::Path) -> Option<Format> {
        if path.as_os_str() == "-" {
            return Some(Format::Yaml);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Some(Format::Yaml),
            Some("toml") => Some(Format::Toml),
            _ => None,
        }
    }
}

/// The TOML file's shape, and one YAML document's without `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lists {
    #[serde(default)]
    workloads: Vec<Workload>,
    #[serde(default)]
    policies: Vec<TenantPolicy>,
}

/// Reads only `kind` and `etag`, ignoring the rest, to choose how to read the
/// document.
#[derive(Debug, Deserialize)]
struct Probe {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    etag: Option<Etag>,
}

/// An etag as written in a file: quoted or a bare number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Etag {
    Text(String),
    Number(u64),
}

impl Etag {
    fn text(self) -> String {
        match self {
            Etag::Text(t) => t,
            Etag::Number(n) => n.to_string(),
        }
    }
}

/// Parses and validates a whole file; `name` is how errors refer to it.
pub fn parse(name: &str, text: &str, format: Format) -> Result<ApplySet, FileError> {
    let set = match format {
        Format::Toml => {
            let lists: Lists = toml::from_str(text).map_err(|e| FileError {
                location: name.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
            let set = ApplySet {
                workloads: lists.workloads,
                policies: lists.policies,
                etags: Etags::default(),
            };
            validate(&set).map_err(|message| FileError {
                location: name.to_owned(),
                message,
            })?;
            set
        }
        Format::Yaml => {
            let mut set = ApplySet::default();
            for doc in documents(text) {
                let location = format!("{name}: document {} (from line {})", doc.number, doc.line);
                let error = |message: String| FileError {
                    location: location.clone(),
                    message,
                };
                let one = read_document(&doc)
                    .map_err(|m| tidy_yaml_error(&m, name))
                    .map_err(error)?;
                validate(&one).map_err(error)?;
                set.workloads.extend(one.workloads);
                set.policies.extend(one.policies);
                set.etags.workloads.extend(one.etags.workloads);
                set.etags.policies.extend(one.etags.policies);
            }
            set
        }
    };
    if set.workloads.is_empty() && set.policies.is_empty() {
        return Err(FileError {
            location: name.to_owned(),
            message: "no workloads or policies (see `flotilla ctl apply --help` for the schema)"
                .into(),
        });
    }
    Ok(set)
}

/// Core's checks, which name the object and field; run on the whole file before the
/// first write so that a bad file changes nothing.
fn validate(set: &ApplySet) -> Result<(), String> {
    for w in &set.workloads {
        w.validate().map_err(|e| e.to_string())?;
    }
    for p in &set.policies {
        p.validate().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One YAML document, padded with empty lines so that the parser's line numbers are
/// the file's.
#[derive(Debug)]
struct Document {
    /// 1-based, counting only documents with content.
    number: usize,
    /// The file line (1-based) the document starts on.
    line: usize,
    padded: String,
}

/// Splits at `---` lines. The parser reads each document alone so that one document
/// can be a workload and the next a policy, each with `deny_unknown_fields` and the
/// parser's own line numbers.
fn documents(text: &str) -> Vec<Document> {
    let mut chunks: Vec<(usize, String)> = vec![(0, String::new())];
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        let separator = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if separator && i > 0 {
            chunks.push((i, "\n".repeat(i)));
        }
        if let Some((_, chunk)) = chunks.last_mut() {
            chunk.push_str(line);
        }
    }
    chunks
        .into_iter()
        .filter(|(_, chunk)| {
            chunk.lines().any(|l| {
                let l = l.trim();
                !(l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
            })
        })
        .enumerate()
        .map(|(n, (start, padded))| {
            // The first line with content, for the message.
            let first = padded
                .lines()
                .enumerate()
                .skip(start)
                .find(|(_, l)| {
                    let l = l.trim();
                    !(l.is_empty() || l.starts_with('#') || l == "---")
                })
                .map_or(start, |(i, _)| i);
            Document {
                number: n + 1,
                line: first + 1,
                padded,
            }
        })
        .collect()
}

fn read_document(doc: &Document) -> Result<ApplySet, String> {
    let yaml = |e: serde_saphyr::Error| e.to_string().trim_end().to_owned();
    let probe: Probe = serde_saphyr::from_str(&doc.padded).map_err(yaml)?;
    let Some(kind) = probe.kind else {
        if probe.etag.is_some() {
            return Err(
                "etag: belongs to a one-object document (`kind: Workload` or `kind: TenantPolicy`), not to lists".to_owned(),
            );
        }
        let lists: Lists = serde_saphyr::from_str(&doc.padded).map_err(yaml)?;
        return Ok(ApplySet {
            workloads: lists.workloads,
            policies: lists.policies,
            etags: Etags::default(),
        });
    };
    // The object types deny unknown fields, `kind` and `etag` among them: blank their
    // lines (which keeps the line numbers) rather than loosen them.
    let bare = blank_key_line(&doc.padded, "kind")
        .and_then(|d| if probe.etag.is_some() { blank_key_line(&d, "etag") } else { Some(d) })
        .ok_or_else(|| {
            "write `kind:` and `etag:` as top-level keys on their own lines (a block mapping, not `{...}`)"
                .to_owned()
        })?;
    let etag = probe.etag.map(Etag::text);
    match kind.as_str() {
        "Workload" => {
            let w: Workload = serde_saphyr::from_str(&bare).map_err(yaml)?;
            let mut etags = Etags::default();
            etags.workloads.extend(etag.map(|e| (w.name.clone(), e)));
            Ok(ApplySet {
                workloads: vec![w],
                policies: Vec::new(),
                etags,
            })
        }
        "TenantPolicy" => {
            let p: TenantPolicy = serde_saphyr::from_str(&bare).map_err(yaml)?;
            let mut etags = Etags::default();
            etags.policies.extend(etag.map(|e| (p.tenant.clone(), e)));
            Ok(ApplySet {
                workloads: Vec::new(),
                policies: vec![p],
                etags,
            })
        }
        other => Err(format!(
            "kind: {other:?} is not one flotilla applies (Workload or TenantPolicy; or no kind, with workloads: and policies: lists)"
        )),
    }
}

/// The parser's message without its own `error: ` prefix (main adds one), and with
/// the file's name where its snippet says `<input>`.
fn tidy_yaml_error(message: &str, name: &str) -> String {
    message
        .strip_prefix("error: ")
        .unwrap_or(message)
        .replace("--> <input>:", &format!("--> {name}:"))
}

/// The document with its top-level `key:` line emptied, or None if there is none.
fn blank_key_line(padded: &str, key: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(padded.len());
    for line in padded.split_inclusive('\n') {
        let is_kind = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'));
        if is_kind && !found {
            found = true;
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<ApplySet, String> {
        parse("w.yaml", text, Format::Yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_format_follows_the_extension_and_standard_input_is_yaml() {
        use std::path::Path;
        assert_eq!(Format::of(Path::new("a.yaml")), Some(Format::Yaml));
        assert_eq!(Format::of(Path::new("a.yml")), Some(Format::Yaml));
        assert_eq!(Format::of(Path::new("a.toml")), Some(Format::Toml));
        assert_eq!(Format::of(Path::new("-")), Some(Format::Yaml));
        assert_eq!(Format::of(Path::new("a.json")), None);
    }

    #[test]
    fn a_mapping_of_lists_reads_like_the_toml_file() {
        let set = yaml(
            "workloads:\n  - name: chat\n    model: m\n    replicas: {min: 1, max: 2}\n    gpu: {count: 1}\n    mobility: {movable: true, min_dwell: 5m}\npolicies:\n  - tenant: acme\n    approved_models: [m]\n",
        )
        .expect("parses");
        assert_eq!(set.workloads.len(), 1);
        assert_eq!(set.workloads[0].mobility.min_dwell.0, 300_000);
        assert_eq!(set.policies[0].tenant, "acme");
    }

    #[test]
    fn documents_with_a_kind_are_one_object_each_in_file_order() {
        let set = yaml(
            "# leading comment\n---\nkind: Workload\nname: a\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 1}\n---\nkind: TenantPolicy\ntenant: acme\napproved_models: [\"*\"]\n---\nkind: Workload\nname: b\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 2}\n",
        )
        .expect("parses");
        let names: Vec<&str> = set.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(set.policies.len(), 1);
    }

    #[test]
    fn a_one_object_document_may_carry_the_etag_it_was_read_at() {
        let set = yaml(
            "kind: Workload\netag: \"17\"\nname: a\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 1}\n---\nkind: TenantPolicy\ntenant: acme\netag: 4\napproved_models: [m]\n---\nkind: TenantPolicy\ntenant: other\napproved_models: [m]\n",
        )
        .expect("parses");
        assert_eq!(set.etags.workloads.get("a").map(String::as_str), Some("17"));
        assert_eq!(
            set.etags.policies.get("acme").map(String::as_str),
            Some("4")
        );
        assert_eq!(
            set.etags.policies.get("other"),
            None,
            "no etag: unconditional"
        );
    }

    #[test]
    fn an_etag_in_a_list_document_says_where_it_belongs() {
        let err = yaml("etag: \"3\"\npolicies:\n  - tenant: acme\n    approved_models: [m]\n")
            .expect_err("refused");
        assert!(err.contains("belongs to a one-object document"), "{err}");
    }

    #[test]
    fn a_typo_names_the_file_document_line_and_field() {
        let err = yaml(
            "kind: Workload\nname: a\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 1}\n---\nkind: Workload\nname: b\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 1}\nprioirty: 3\n",
        )
        .expect_err("a typo is an error");
        assert!(
            err.starts_with("w.yaml: document 2 (from line 7): "),
            "{err}"
        );
        assert!(err.contains("prioirty"), "{err}");
        assert!(err.contains("line 12"), "{err}");
        // The parser's snippet points into the file by its name and line.
        assert!(err.contains("--> w.yaml:12:1"), "{err}");
        assert!(!err.contains("error: "), "{err}");
    }

    #[test]
    fn an_invalid_workload_names_the_document_object_and_field() {
        let err = yaml("workloads:\n  - name: big\n    model: m\n    replicas: {min: 3, max: 2}\n    gpu: {count: 1}\n")
            .expect_err("min > max");
        assert_eq!(
            err,
            "w.yaml: document 1 (from line 1): workload \"big\": replicas.min (3) > replicas.max (2)"
        );
    }

    #[test]
    fn an_unknown_kind_says_which_kinds_exist() {
        let err = yaml("kind: Deployment\nname: a\n").expect_err("unknown kind");
        assert!(err.contains("Workload or TenantPolicy"), "{err}");
    }

    #[test]
    fn a_flow_mapping_with_kind_says_how_to_write_it() {
        let err = yaml("{kind: Workload, name: a}\n").expect_err("flow kind");
        assert!(err.contains("own line"), "{err}");
    }

    #[test]
    fn an_empty_file_is_an_error_not_a_silent_success() {
        let err = yaml("# nothing\n---\n").expect_err("empty");
        assert!(err.contains("no workloads or policies"), "{err}");
    }

    #[test]
    fn toml_files_keep_working_and_name_the_line() {
        let set = parse(
            "w.toml",
            "[[workloads]]\nname = \"a\"\nmodel = \"m\"\nreplicas = { min = 1, max = 1 }\ngpu = { count = 1 }\n",
            Format::Toml,
        )
        .expect("parses");
        assert_eq!(set.workloads[0].name, "a");
        let err = parse(
            "w.toml",
            "[[policies]]\ntenant = \"a\"\nmodels = []\n",
            Format::Toml,
        )
        .expect_err("typo")
        .to_string();
        assert!(
            err.starts_with("w.toml: ") && err.contains("models") && err.contains("line 3"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_examples_parse_and_validate() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples/");
        for (file, workloads, policies) in [("workloads.yaml", 3, 0), ("policies.yaml", 0, 2)] {
            let text = std::fs::read_to_string(format!("{root}{file}")).expect("example exists");
            let set = parse(file, &text, Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (set.workloads.len(), set.policies.len()),
                (workloads, policies),
                "{file}"
            );
        }
    }
}

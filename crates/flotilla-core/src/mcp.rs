//! MCP servers (the Model Context Protocol, `flotilla.v1alpha1`): services that
//! gateways route to by a host or path rule, and whose tools each tenant may call.
//!
//! An MCP server runs as a workload like a model does: its `service` is the model id
//! that workload serves, so it is placed, moved and routed as any other. What this
//! object adds is the rule that sends requests to it and, per tenant, the tools a
//! caller may `tools/call` (and sees in `tools/list`). A tenant it does not name may
//! not use it at all.

use crate::error::{ObjectKind, ValidationError};
use crate::names::{validate_identifier, validate_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Approves every tool of the server.
pub const ALL_TOOLS: &str = "*";

/// The longest path prefix accepted.
const MAX_PATH_PREFIX: usize = 256;

/// The longest tool name accepted, as MCP's schema advises.
const MAX_TOOL_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    pub name: String,
    /// The request's host (without port) this server answers; empty: any host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The start of the paths this server answers (`/` with a host: all of them).
    pub path_prefix: String,
    /// The model id of the workload that serves it.
    pub service: String,
    /// Per tenant, the tools it may call; `*` approves all of them.
    pub tools: BTreeMap<String, Vec<String>>,
}

impl McpServer {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(ObjectKind::McpServer, &self.name, "name")?;
        let bad = |field: &str, message: String| {
            Err(ValidationError::new(
                ObjectKind::McpServer,
                &self.name,
                field,
                message,
            ))
        };
        if let Some(problem) = host_problem(&self.host) {
            return bad("host", problem);
        }
        if let Some(problem) = path_problem(&self.path_prefix) {
            return bad("path_prefix", problem);
        }
        if self.host.is_empty() && self.path_prefix == "/" {
            return bad(
                "path_prefix",
                "without a host, a path prefix other than \"/\" is needed, or the server would take every request".into(),
            );
        }
        validate_identifier(ObjectKind::McpServer, &self.name, "service", &self.service)?;
        for (tenant, tools) in &self.tools {
            let field = format!("tools[{tenant}]");
            validate_name(ObjectKind::McpServer, tenant, &field).map_err(|e| {
                ValidationError::new(
                    ObjectKind::McpServer,
                    &self.name,
                    &field,
                    format!("{tenant:?} {}", e.message),
                )
            })?;
            if tools.is_empty() {
                return bad(
                    &field,
                    "names no tool; leave the tenant out to refuse it the server".into(),
                );
            }
            for (i, tool) in tools.iter().enumerate() {
                if let Some(problem) = tool_problem(tool) {
                    return bad(&format!("{field}[{i}]"), problem);
                }
            }
        }
        Ok(())
    }

    /// Whether `tenant` may use this server at all.
    pub fn admits(&self, tenant: &str) -> bool {
        self.tools.contains_key(tenant)
    }

    /// Whether `tenant` may call `tool`.
    pub fn allows(&self, tenant: &str, tool: &str) -> bool {
        self.tools
            .get(tenant)
            .is_some_and(|tools| tools.iter().any(|t| t == ALL_TOOLS || t == tool))
    }

    /// Whether a request to `host` and `path` is this server's.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        (self.host.is_empty() || Some(self.host.as_str()) == host)
            && path.starts_with(&self.path_prefix)
    }
}

fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Some(format!(
            "{host:?} is not a lowercase DNS name (no port, no scheme)"
        ));
    }
    None
}

fn path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!("{path:?} must start with \"/\""));
    }
    if path.len() > MAX_PATH_PREFIX {
        return Some(format!(
            "is {} characters long; at most {MAX_PATH_PREFIX} are allowed",
            path.len()
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%'))
    {
        return Some(format!(
            "{path:?} contains {c:?}; a prefix is a plain path, without query, fragment or escapes"
        ));
    }
    // OpenAI requests are recognised by their path before any rule is read.
    if path == "/v1" || path.starts_with("/v1/") {
        return Some(format!(
            "{path:?} lies under /v1, where the gateway serves the OpenAI API"
        ));
    }
    None
}

fn tool_problem(tool: &str) -> Option<String> {
    if tool == ALL_TOOLS {
        return None;
    }
    if tool.is_empty() || tool.len() > MAX_TOOL_NAME {
        return Some(format!(
            "{tool:?}: a tool name has 1 to {MAX_TOOL_NAME} characters"
        ));
    }
    tool.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map(|c| {
            format!("{tool:?} contains {c:?}; tool names use letters, digits, '_', '-' and '.'")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> McpServer {
        McpServer {
            name: "tools".into(),
            host: String::new(),
            path_prefix: "/mcp".into(),
            service: "tools-mcp".into(),
            tools: BTreeMap::from([
                ("acme".into(), vec!["search".into(), "fetch".into()]),
                ("ops".into(), vec![ALL_TOOLS.into()]),
            ]),
        }
    }

    #[test]
    fn a_tenant_calls_only_the_tools_named_for_it_and_star_names_all() {
        let s = server();
        assert!(s.allows("acme", "search"));
        assert!(!s.allows("acme", "delete_everything"));
        assert!(s.allows("ops", "delete_everything"));
        assert!(!s.allows("stranger", "search"));
        assert!(s.admits("acme") && !s.admits("stranger"));
    }

    #[test]
    fn a_rule_matches_its_host_and_path_prefix() {
        let mut s = server();
        assert!(s.matches(Some("any.example"), "/mcp/x"));
        assert!(!s.matches(None, "/other"));
        s.host = "mcp.example".into();
        assert!(s.matches(Some("mcp.example"), "/mcp"));
        assert!(!s.matches(Some("other.example"), "/mcp"));
    }

    #[test]
    fn a_server_without_host_or_path_or_under_v1_is_refused_naming_the_field() {
        let field = |s: McpServer| s.validate().unwrap_err().field;
        assert_eq!(
            field(McpServer {
                path_prefix: "/".into(),
                ..server()
            }),
            "path_prefix"
        );
        assert_eq!(
            field(McpServer {
                path_prefix: "/v1/mcp".into(),
                ..server()
            }),
            "path_prefix"
        );
        assert_eq!(
            field(McpServer {
                host: "Mcp.Example:443".into(),
                ..server()
            }),
            "host"
        );
        let mut no_tools = server();
        no_tools.tools.insert("empty".into(), Vec::new());
        assert_eq!(field(no_tools), "tools[empty]");
        let mut bad_tool = server();
        bad_tool.tools.insert("acme".into(), vec!["rm -rf".into()]);
        assert_eq!(field(bad_tool), "tools[acme][0]");
        assert!(
            McpServer {
                host: "mcp.example".into(),
                path_prefix: "/".into(),
                ..server()
            }
            .validate()
            .is_ok()
        );
    }
}

//! MCP servers (`flotilla.v1alpha1`): each is served by a workload and owns its
//! rule; a refused write changes nothing.

use flotilla_core::fixtures::{Federation, workload};
use flotilla_core::{Command, McpServer, ObjectKind, Rejection};
use std::collections::BTreeMap;

fn server(name: &str, path_prefix: &str, service: &str) -> McpServer {
    McpServer {
        name: name.into(),
        host: String::new(),
        path_prefix: path_prefix.into(),
        service: service.into(),
        tools: BTreeMap::from([("acme".into(), vec!["search".into()])]),
    }
}

fn set(f: &mut Federation, server: McpServer) -> Result<(), Rejection> {
    f.apply(Command::SetMcpServer { server }).map(|_| ())
}

fn serving(model: &str) -> Federation {
    let mut f = Federation::new();
    let workload = workload("tools", model, 1, 1);
    f.apply(Command::ApplyWorkload { workload }).unwrap();
    f
}

#[test]
fn an_mcp_server_must_be_served_by_a_workload() {
    let mut f = Federation::new();
    let before = f.state.clone();
    let err = set(&mut f, server("tools", "/mcp", "tools-mcp")).unwrap_err();
    assert!(
        matches!(&err, Rejection::Precondition { kind: ObjectKind::McpServer, name, .. } if name == "tools"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("no workload serves \"tools-mcp\""),
        "{err}"
    );
    assert_eq!(f.state, before, "nothing changed");
}

#[test]
fn two_servers_cannot_share_a_rule_but_one_may_replace_its_own() {
    let mut f = serving("tools-mcp");
    set(&mut f, server("tools", "/mcp", "tools-mcp")).unwrap();
    let err = set(&mut f, server("copy", "/mcp", "tools-mcp")).unwrap_err();
    assert!(
        err.to_string()
            .contains("already MCP server \"tools\"'s rule"),
        "{err}"
    );
    let mut widened = server("tools", "/mcp", "tools-mcp");
    widened.tools.insert("ops".into(), vec!["*".into()]);
    set(&mut f, widened.clone()).unwrap();
    assert_eq!(f.state.mcp_servers().get("tools"), Some(&widened));
}

#[test]
fn deleting_removes_the_server_and_an_unknown_one_is_not_found() {
    let mut f = serving("tools-mcp");
    set(&mut f, server("tools", "/mcp", "tools-mcp")).unwrap();
    f.apply(Command::DeleteMcpServer {
        name: "tools".into(),
    })
    .unwrap();
    assert!(f.state.mcp_servers().is_empty());
    let err = f
        .apply(Command::DeleteMcpServer {
            name: "tools".into(),
        })
        .unwrap_err();
    assert!(matches!(err, Rejection::NotFound { .. }), "{err:?}");
}

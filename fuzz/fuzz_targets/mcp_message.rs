//! An MCP message as a client POSTs it, and a server's `tools/list` answer, as the
//! gateway reads them: whatever the bytes, reading never panics; a refusal of a
//! message's tool calls answers exactly its requests; and filtering an answer
//! twice is filtering it once (nothing forbidden is left the first time).
#![no_main]
use flotilla_gateway::mcp;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if let Ok(inspected) = mcp::inspect(body) {
        let forbidden = mcp::forbidden(&inspected, |_| false);
        assert_eq!(forbidden.len(), inspected.tool_calls.len());
        match mcp::refusal(&inspected, &forbidden, "t", "s") {
            Some(Value::Array(answers)) => {
                assert!(inspected.batch);
                assert_eq!(answers.len(), inspected.request_ids.len());
            }
            Some(answer) => assert_eq!(Some(&answer["id"]), inspected.request_ids.first()),
            None => assert!(forbidden.is_empty() || inspected.request_ids.is_empty()),
        }
    }
    let ids = [Value::from(u64::from(selector)), Value::from("l")];
    let content_type = if selector % 2 == 0 {
        "application/json"
    } else {
        "text/event-stream"
    };
    let allow = |tool: &str| tool.len() % 2 == 0;
    if let Ok(once) = mcp::filter_tools(body, content_type, &ids, allow) {
        // Filtering what was filtered changes nothing: no forbidden tool is left.
        let twice = mcp::filter_tools(&once, content_type, &ids, allow)
            .expect("the gateway reads what it wrote");
        if content_type == "application/json" {
            let (a, b): (Value, Value) = (
                serde_json::from_slice(&once).unwrap(),
                serde_json::from_slice(&twice).unwrap(),
            );
            assert_eq!(a, b);
        } else {
            assert_eq!(once, twice);
        }
    }
});

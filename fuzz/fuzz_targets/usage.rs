//! An answer's body, as the gateway reads its token spend (`usage`, or a stream's
//! chunks) frame by frame: whatever the bytes, and however they are cut into
//! frames, the count is the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = match selector % 3 {
        0 => Some("application/json"),
        1 => Some("text/event-stream; charset=utf-8"),
        _ => None,
    };
    let whole = flotilla_gateway::tokens_spent(content_type, &[body]);
    let cut = usize::from(selector).min(body.len());
    let (a, b) = body.split_at(cut);
    assert_eq!(flotilla_gateway::tokens_spent(content_type, &[a, b]), whole);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(flotilla_gateway::tokens_spent(content_type, &bytes), whole);
});

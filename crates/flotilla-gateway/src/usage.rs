//! How many tokens a response spent, read from what it says of itself: the
//! `usage` object of an OpenAI-style answer, or of a stream's chunks (the final
//! one, with `stream_options.include_usage`).
//!
//! The scanner sees the body frame by frame as it passes and keeps only what it
//! needs: the last [`TAIL_BYTES`] of a JSON answer (`usage` comes after the
//! choices), and the line being read of an event stream. A stream that reports
//! no usage is charged one token per chunk: a lower bound, since its prompt goes
//! uncounted.

use serde::Deserialize;

/// How much of the end of a JSON answer is kept to find its `usage`.
pub(crate) const TAIL_BYTES: usize = 64 * 1024;

/// The longest event-stream line read; a longer one is skipped (and counted as
/// a chunk).
const MAX_LINE_BYTES: usize = 256 * 1024;

const USAGE_KEY: &[u8] = b"\"usage\"";

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl Usage {
    fn total(&self) -> u64 {
        self.total_tokens
            .unwrap_or(self.prompt_tokens.saturating_add(self.completion_tokens))
    }
}

#[derive(Debug, Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug)]
enum Kind {
    Json { tail: Vec<u8> },
    EventStream { line: Vec<u8>, skipping: bool },
}

/// Reads one response body's token spend as it goes by.
#[derive(Debug)]
pub(crate) struct UsageScanner {
    kind: Kind,
    /// What a stream's lines said so far.
    stream: StreamSpend,
}

/// What an event stream's lines said of its spend.
#[derive(Debug, Default)]
struct StreamSpend {
    /// The latest `usage` reported.
    reported: Option<u64>,
    /// Data events other than `[DONE]`.
    chunks: u64,
}

impl UsageScanner {
    /// A scanner for a body of this `Content-Type`.
    pub(crate) fn new(content_type: Option<&str>) -> UsageScanner {
        let stream = content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        let kind = if stream {
            Kind::EventStream {
                line: Vec::new(),
                skipping: false,
            }
        } else {
            Kind::Json { tail: Vec::new() }
        };
        UsageScanner {
            kind,
            stream: StreamSpend::default(),
        }
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        match &mut self.kind {
            Kind::Json { tail } => {
                tail.extend_from_slice(bytes);
                if tail.len() > TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
            Kind::EventStream { line, skipping } => {
                let mut rest = bytes;
                while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                    if !*skipping {
                        line.extend_from_slice(&rest[..end]);
                        self.stream.take(line);
                    } else {
                        self.stream.chunks += 1;
                    }
                    line.clear();
                    *skipping = false;
                    rest = &rest[end + 1..];
                }
                if !*skipping {
                    line.extend_from_slice(rest);
                    if line.len() > MAX_LINE_BYTES {
                        line.clear();
                        *skipping = true;
                    }
                }
            }
        }
    }

    /// The tokens the whole body spent (call once it has ended, or been dropped).
    pub(crate) fn finish(&mut self) -> u64 {
        match &mut self.kind {
            Kind::Json { tail } => usage_in_tail(tail).unwrap_or(0),
            Kind::EventStream { line, skipping } => {
                if !*skipping && !line.is_empty() {
                    self.stream.take(line);
                    line.clear();
                }
                self.stream.reported.unwrap_or(self.stream.chunks)
            }
        }
    }
}

/// The tokens a body of `content_type` spent, read as it would pass in `frames`
/// (for fuzzing: how a body is cut into frames must not change the count).
pub fn tokens_spent(content_type: Option<&str>, frames: &[&[u8]]) -> u64 {
    let mut scanner = UsageScanner::new(content_type);
    for f in frames {
        scanner.feed(f);
    }
    scanner.finish()
}

impl StreamSpend {
    /// Takes one whole line of the stream in.
    fn take(&mut self, line: &[u8]) {
        let (reported, chunk) = read_event_line(line);
        self.reported = reported.or(self.reported);
        self.chunks += u64::from(chunk);
    }
}

/// A line of an event stream: the usage it reports, and whether it is a chunk.
fn read_event_line(line: &[u8]) -> (Option<u64>, bool) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return (None, false);
    };
    let data = data.trim_ascii();
    if data.is_empty() || data == b"[DONE]" {
        return (None, false);
    }
    if !contains(data, USAGE_KEY) {
        return (None, true);
    }
    let usage = serde_json::from_slice::<WithUsage>(data)
        .ok()
        .and_then(|c| c.usage)
        .map(|u| u.total());
    (usage, true)
}

/// The usage of a JSON answer, from its end: the last `"usage":` key that is
/// followed by an object. A `"usage"` inside a string is escaped (`\"usage\"`),
/// so it does not match.
fn usage_in_tail(tail: &[u8]) -> Option<u64> {
    let mut end = tail.len();
    while let Some(at) = rfind(&tail[..end], USAGE_KEY) {
        let after = tail[at + USAGE_KEY.len()..].trim_ascii_start();
        if let Some(value) = after.strip_prefix(b":") {
            let mut values =
                serde_json::Deserializer::from_slice(value.trim_ascii_start()).into_iter::<Usage>();
            if let Some(Ok(u)) = values.next() {
                return Some(u.total());
            }
        }
        end = at;
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(content_type: &str, frames: &[&[u8]]) -> u64 {
        let mut s = UsageScanner::new(Some(content_type));
        for f in frames {
            s.feed(f);
        }
        s.finish()
    }

    const ANSWER: &[u8] = br#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"say \"usage\": {\"total_tokens\": 9999}"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":0}}}"#;

    #[test]
    fn a_json_answer_spends_its_usage_total_however_it_is_split() {
        for cut in [1, 7, 100, ANSWER.len() - 3] {
            let (a, b) = ANSWER.split_at(cut);
            assert_eq!(spent("application/json", &[a, b]), 42, "split at {cut}");
        }
    }

    #[test]
    fn usage_without_a_total_is_prompt_plus_completion() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#;
        assert_eq!(spent("application/json", &[body]), 11);
    }

    #[test]
    fn an_answer_without_usage_or_not_json_spends_nothing() {
        assert_eq!(spent("application/json", &[br#"{"choices":[]}"#]), 0);
        assert_eq!(spent("text/plain", &[b"usage: lots"]), 0);
        assert_eq!(spent("application/json", &[br#"{"usage": null}"#]), 0);
    }

    #[test]
    fn a_long_answer_keeps_only_its_tail_and_still_finds_usage() {
        let mut s = UsageScanner::new(Some("application/json"));
        s.feed(br#"{"choices":[{"message":{"content":""#);
        for _ in 0..1000 {
            s.feed(&[b'x'; 1024]);
        }
        s.feed(br#""}}],"usage":{"total_tokens":7}}"#);
        assert!(matches!(&s.kind, Kind::Json { tail } if tail.len() <= TAIL_BYTES));
        assert_eq!(s.finish(), 7);
    }

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn a_stream_spends_the_usage_of_its_final_chunk_however_it_is_split() {
        for cut in 1..STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(
                spent("text/event-stream; charset=utf-8", &[a, b]),
                11,
                "split at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(spent("text/event-stream", &bytes), 11);
    }

    #[test]
    fn a_stream_without_usage_spends_one_token_per_chunk() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n\
: keep-alive\n\
data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(spent("text/event-stream", &[body]), 2);
    }

    #[test]
    fn a_stream_cut_off_mid_line_counts_what_it_sent() {
        assert_eq!(
            spent(
                "text/event-stream",
                &[b"data: {\"choices\":[]}\n\ndata: {\"cho"]
            ),
            2
        );
    }

    #[test]
    fn an_overlong_stream_line_is_skipped_not_kept() {
        let mut s = UsageScanner::new(Some("text/event-stream"));
        s.feed(b"data: ");
        for _ in 0..300 {
            s.feed(&[b'x'; 1024]);
        }
        assert!(matches!(&s.kind, Kind::EventStream { line, .. } if line.len() <= MAX_LINE_BYTES));
        s.feed(b"\ndata: {\"usage\":{\"total_tokens\":3}}\n");
        assert_eq!(s.finish(), 3);
    }
}

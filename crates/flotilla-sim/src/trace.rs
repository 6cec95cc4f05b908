//! The Azure LLM inference trace format: `TIMESTAMP,ContextTokens,GeneratedTokens`,
//! one request a line, timestamps like `2023-11-16 18:17:03.9799600` (UTC).
//!
//! The public traces (Azure/AzurePublicDataset, CC-BY 4.0) come from Patel et al.,
//! "Splitwise: Efficient generative LLM inference using phase splitting", ISCA 2024;
//! reports built from them carry that attribution.

use crate::duration::Micros;
use crate::error::SimError;
use std::path::Path;

/// One request of a trace, its time relative to the first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRequest {
    pub at: Micros,
    pub context_tokens: u32,
    pub generated_tokens: u32,
}

/// Reads a trace file; requests come back sorted by time, the first at 0.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRequest>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_trace(path, &text)
}

/// Parses trace text; `path` only names the file in errors.
pub fn parse_trace(path: &Path, text: &str) -> Result<Vec<TraceRequest>, SimError> {
    let bad = |line: usize, message: String| SimError::Trace {
        path: path.to_owned(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map(|(_, h)| h.trim().trim_start_matches('\u{feff}'))
        .unwrap_or("");
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    if columns != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"] {
        return Err(bad(
            1,
            format!(
                "expected the header TIMESTAMP,ContextTokens,GeneratedTokens, found {header:?}"
            ),
        ));
    }
    let mut rows: Vec<(Micros, u32, u32)> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 3 {
            return Err(bad(n, format!("expected 3 fields, found {}", fields.len())));
        }
        let at = parse_timestamp(fields[0]).map_err(|m| bad(n, m))?;
        let tokens = |k: usize, name: &str| {
            fields[k]
                .parse::<u32>()
                .map_err(|_| bad(n, format!("{name} {:?} is not a whole number", fields[k])))
        };
        rows.push((
            at,
            tokens(1, "ContextTokens")?,
            tokens(2, "GeneratedTokens")?,
        ));
    }
    if rows.is_empty() {
        return Err(bad(1, "the trace has no requests".into()));
    }
    rows.sort_by_key(|r| r.0);
    let first = rows[0].0;
    Ok(rows
        .into_iter()
        .map(|(at, c, g)| TraceRequest {
            at: at - first,
            // A request has at least one prompt and one output token.
            context_tokens: c.max(1),
            generated_tokens: g.max(1),
        })
        .collect())
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` → microseconds since the Unix epoch.
fn parse_timestamp(text: &str) -> Result<Micros, String> {
    let err = || format!("timestamp {text:?} is not YYYY-MM-DD HH:MM:SS[.fraction]");
    let (date, time) = text.split_once([' ', 'T']).ok_or_else(err)?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(err());
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (Some(Ok(hh)), Some(Ok(mm)), Some(Ok(ss)), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(err());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(err());
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(err());
    }
    let micros_frac: i64 = format!("{frac:0<6}")[..6].parse().map_err(|_| err())?;
    let days = days_from_civil(y, m, day);
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    if secs < 0 {
        return Err(err());
    }
    Ok(secs as Micros * 1_000_000 + micros_frac as Micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_read_relative_to_its_first_request() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.9799600,4808,10\n\
                    2023-11-16 18:17:04.0319600,3180,8\n\
                    2023-11-16 23:59:59.5,1,0\n\
                    2023-11-17 00:00:00.5,7,2\n";
        let t = parse_trace(Path::new("t.csv"), text).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            TraceRequest {
                at: 0,
                context_tokens: 4808,
                generated_tokens: 10
            }
        );
        assert_eq!(t[1].at, 52_000);
        assert_eq!(t[3].at - t[2].at, 1_000_000, "midnight is crossed");
        assert_eq!(t[2].generated_tokens, 1, "zero output tokens count as one");
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,10,5\n2023-11-16 18:17:04,ten,5\n";
        let err = parse_trace(Path::new("t.csv"), text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:3: ContextTokens \"ten\" is not a whole number"
        );
    }

    #[test]
    fn a_wrong_header_is_refused() {
        let err = parse_trace(Path::new("t.csv"), "time,in,out\n").unwrap_err();
        assert!(
            err.to_string().starts_with("t.csv:1: expected the header"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_azure_code_trace_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../simulations/traces/AzureLLMInferenceTrace_code.csv");
        let t = read_trace(&path).unwrap();
        assert_eq!(
            t.len(),
            8819,
            "the README rounds to 8,818; the file holds 8,819"
        );
        let span_s = t[t.len() - 1].at / 1_000_000;
        assert!((3000..=3700).contains(&span_s), "about an hour: {span_s}s");
    }
}

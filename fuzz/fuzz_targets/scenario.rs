//! Scenario files of `flotilla sim` and `flotilla up --scenario` (TOML).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = flotilla_sim::scenario::Scenario::parse(Path::new("fuzz.toml"), text);
    }
});

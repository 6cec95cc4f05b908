//! The files of `flotilla ctl apply -f`: workloads and policies, YAML and TOML.
//! Whatever parses must also pass core's validation (the parser checks it).
#![no_main]
use flotilla_client::apply_file::{Format, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for format in [Format::Yaml, Format::Toml] {
            if let Ok(set) = parse("fuzz", text, format) {
                for workload in &set.workloads {
                    assert!(
                        workload.validate().is_ok(),
                        "an invalid workload was accepted"
                    );
                }
            }
        }
    }
});

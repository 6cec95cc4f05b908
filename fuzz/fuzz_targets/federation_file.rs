//! Federation files of `flotilla plan` (TOML): anything may come in; one that parses
//! is loaded into a registry, where core judges each cluster and workload.
#![no_main]
use flotilla_sim::federation::{DryRun, FederationFile};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let source = Path::new("fuzz.toml");
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(file) = FederationFile::parse(source, text)
    {
        let _ = DryRun::load(source, file);
    }
});

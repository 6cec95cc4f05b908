//! Registry snapshots, as a follower restores one sent by its leader (core decodes
//! it before anything is installed): what decodes re-encodes to something that
//! decodes to the same state.
#![no_main]
use flotilla_core::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(state) = State::from_snapshot(bytes) {
        let again =
            State::from_snapshot(&state.to_snapshot()).expect("a snapshot of a state decodes");
        assert_eq!(again.to_snapshot(), state.to_snapshot());
    }
});

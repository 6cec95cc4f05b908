//! The body of an OpenAI request, as the gateway reads the model it routes by.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(model) = flotilla_gateway::model_of(body) {
        assert!(!model.is_empty(), "an empty model was accepted");
    }
});

//! Join tokens as a joiner or the CA server reads them; one that decodes encodes
//! back to a token that decodes to the same.
#![no_main]
use flotilla_pki::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = JoinToken::decode(text)
    {
        let again = token.encode().expect("a decoded token encodes");
        let back = JoinToken::decode(&again).expect("an encoded token decodes");
        assert_eq!(back.encode().expect("encodes"), again);
    }
});

//! Any text an agent may send as a frame: decoding never panics, and whatever decodes encodes
//! back to a frame that decodes to the same message.
#![no_main]

use infermine_protocol::{decode_agent, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = decode_agent(text) {
        let again = decode_agent(&encode(&message)).expect("an encoded frame decodes");
        assert_eq!(again, message, "a frame survives encode → decode");
    }
});

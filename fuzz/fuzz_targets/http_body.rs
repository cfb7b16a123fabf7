//! An HTTP request body → the engine request: the body's shape, then the
//! engine's own checks (stop strings, sampling, checked prompt + max_tokens).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let chat = data.first().is_some_and(|b| b & 1 == 1);
    let _ = infer::http_body::check_bytes(data.get(1..).unwrap_or(&[]), chat, 8192);
});

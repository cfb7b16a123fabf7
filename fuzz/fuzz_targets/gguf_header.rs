//! A GGUF file's header and metadata (the model loader's first read of a
//! file from anywhere): any bytes give a header or a typed error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = model::gguf::Header::parse(data) {
        // Typed lookups on whatever came out must not panic either.
        let _ = h.u64("llama.context_length");
        let _ = h.str("general.architecture");
    }
});

//! One manifest record (a version edit), as recovery decodes it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(edit) = storage::version::VersionEdit::decode(data) {
        // What decodes must encode and decode to the same edit.
        let again = storage::version::VersionEdit::decode(&edit.encode());
        assert!(again.is_ok(), "a decoded edit does not round-trip");
    }
});

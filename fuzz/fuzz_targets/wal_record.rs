//! A WAL file as recovery reads it: records (torn tail vs corruption), then
//! each record's write batch.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(wal) = storage::wal::parse_wal(std::path::Path::new("fuzz.log"), data) {
        for (_, payload) in &wal.records {
            let _ = storage::batch::decode_wal_payload(payload);
        }
    }
});

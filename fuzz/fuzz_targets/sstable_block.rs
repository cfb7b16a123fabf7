//! An SSTable data block as read from disk: parse, list every entry, seek.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = storage::sstable::block::Block::parse(data.to_vec()) {
        let _ = block.entries();
        let key = data.get(..data.len().min(16)).unwrap_or(&[]);
        let _ = block.seek(key, |a, b| a.cmp(b));
    }
});

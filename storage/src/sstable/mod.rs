//! Sorted string tables: immutable files of sorted internal keys.
//!
//! ```text
//! file   = data block* | filter block | index block | footer (56 bytes)
//! block on disk = contents | type u8 (0 raw, 1 lz4) | crc32c u32 LE (over contents ++ type)
//! index  = a block: key = last internal key of data block i, value = varint offset | varint size
//! filter = bloom bits over the table's user keys (see bloom.rs), same trailer
//! footer = filter offset u64 | filter size u64 | index offset u64 | index size u64
//!        | entry count u64 | format version u32 | crc32c u32 (of the 44 bytes before)
//!        | magic u64 = "mlstkSST"
//! ```
//!
//! Every block's checksum is verified on every read from disk; a mismatch is
//! [`crate::Error::Corruption`] naming the file and the block's offset.

pub mod block;
pub mod bloom;
pub mod cache;
mod table;

pub use table::{Probe, Table, TableBuilder, TableInfo, sst_path};

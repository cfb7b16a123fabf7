//! `mlstack lsm ...`: the storage engine from the command line.

use std::ops::Bound;

use storage::{Db, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::Error;
use crate::cli::{LsmBenchArgs, LsmCommand, LsmScanArgs};

/// Parses `\xNN` escapes so any byte string can be typed.
pub fn parse_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Prints bytes as UTF-8 where printable, `\xNN` otherwise.
pub fn show_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

fn open(dir: &std::path::Path, create: bool) -> Result<Db, Error> {
    Ok(Db::open(
        dir,
        Options {
            create_if_missing: create,
            ..Options::default()
        },
    )?)
}

pub fn run(cmd: &LsmCommand) -> Result<(), Error> {
    match cmd {
        LsmCommand::Put(a) => {
            let db = open(&a.db.dir, true)?;
            let mut b = WriteBatch::new();
            b.put(parse_bytes(&a.key), parse_bytes(&a.value));
            db.write(b, &WriteOptions { sync: a.sync })?;
            Ok(())
        }
        LsmCommand::Get(a) => {
            let db = open(&a.db.dir, false)?;
            match db.get(parse_bytes(&a.key))? {
                Some(v) => {
                    println!("{}", show_bytes(&v));
                    Ok(())
                }
                None => Err(Error::KeyNotFound(a.key.clone())),
            }
        }
        LsmCommand::Delete(a) => {
            let db = open(&a.db.dir, false)?;
            db.delete(parse_bytes(&a.key))?;
            Ok(())
        }
        LsmCommand::Scan(a) => scan(a),
        LsmCommand::Stats(a) => {
            let db = open(&a.dir, false)?;
            let s = db.stats();
            println!("level  files        bytes");
            for (i, l) in s.levels.iter().enumerate() {
                println!("L{i:<5} {:>5} {:>12}", l.files, l.bytes);
            }
            for (level, t) in db.tables() {
                println!(
                    "  L{level} {:06}.sst {:>10} bytes {:>8} entries [{} .. {}]",
                    t.number,
                    t.file_bytes,
                    t.entries,
                    show_bytes(storage::key::user_key(&t.smallest)),
                    show_bytes(storage::key::user_key(&t.largest))
                );
            }
            println!("latest sequence {}", db.latest_sequence());
            println!("{s:#?}");
            Ok(())
        }
        LsmCommand::Verify(a) => {
            let db = open(&a.dir, false)?;
            let (blocks, entries) = db.verify()?;
            println!("ok: {blocks} data blocks, {entries} entries, every checksum verified");
            Ok(())
        }
        LsmCommand::Compact(a) => {
            let db = open(&a.dir, false)?;
            db.compact_range(None, None)?;
            let s = db.stats();
            println!(
                "compacted: {} compactions, levels {:?}",
                s.compactions,
                s.levels.iter().map(|l| l.files).collect::<Vec<_>>()
            );
            Ok(())
        }
        LsmCommand::Bench(a) => bench(a),
    }
}

fn scan(a: &LsmScanArgs) -> Result<(), Error> {
    let db = open(&a.db.dir, false)?;
    let ro = ReadOptions::default();
    let it = match &a.prefix {
        Some(p) => db.prefix(&parse_bytes(p), a.reverse, &ro)?,
        None => {
            let start = a.start.as_deref().map(parse_bytes);
            let end = a.end.as_deref().map(parse_bytes);
            db.range(
                start.as_deref().map_or(Bound::Unbounded, Bound::Included),
                end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                a.reverse,
                &ro,
            )?
        }
    };
    for kv in it.take(a.limit) {
        let (k, v) = kv?;
        println!("{}\t{}", show_bytes(&k), show_bytes(&v));
    }
    Ok(())
}

fn bench(a: &LsmBenchArgs) -> Result<(), Error> {
    let cfg = bench::lsm::Config {
        dir: a.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("mlstack-lsm-bench-{}", std::process::id()))
        }),
        num_keys: a.keys,
        num_reads: a.reads,
        num_seeks: a.seeks,
        num_sync_writes: a.sync_writes,
        mixed_ops_per_thread: a.mixed_ops,
        repeats: a.repeats,
        seed: a.seed,
        systems: a.systems.clone(),
    };
    let rows = bench::lsm::run(&cfg, |p| eprintln!("lsm bench: {p}")).map_err(Error::Bench)?;
    print!("{}", bench::lsm::table(&rows));
    crate::write_bench_report(&a.out, &bench::lsm::report(&cfg, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        assert_eq!(parse_bytes("a\\x00b\\xff"), b"a\x00b\xff");
        assert_eq!(show_bytes(b"a\x00b\xff"), "a\\x00b\\xff");
        assert_eq!(parse_bytes("\\xzz"), b"\\xzz");
    }
}

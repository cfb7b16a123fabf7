//! Simulated power loss: what the disk holds once the power is cut.
//!
//! A SIGKILL leaves the kernel's page cache intact, so a crash test that
//! kills a process passes even with every fsync deleted. This layer sits in
//! [`crate::io::Fs`] (every file the engine writes goes through it) and
//! remembers two things:
//! - per file, how much of it an fsync has made durable;
//! - per directory, which entries a directory fsync has made durable.
//!
//! [`PowerLoss::cut`] then rewrites each directory to exactly that durable
//! state. This is what RocksDB's `FaultInjectionTestFS` does
//! (`DropUnsyncedFileData` and `DeleteFilesCreatedAfterLastDirSync`) and what
//! LazyFS does below a real file system; here renames and unlinks that no
//! directory fsync covered are undone as well.
//!
//! # The model: the weakest promise POSIX makes
//! - Bytes written to a file since its last `fsync`/`fdatasync` are gone; a
//!   preallocated (zero-filled, size-synced) region keeps its zeros.
//! - A create, rename or unlink in a directory since that directory's last
//!   fsync is undone: a new file vanishes even if its data was synced, a
//!   renamed file is back under its old name, an unlinked file is back, with
//!   its durable contents.
//! - Truncating a file by re-creating it is undone the same way.
//! - A directory created through the layer ([`crate::io::Fs::create_dir`])
//!   whose parent has not been fsynced since is gone, with everything in it.
//! - A hard link is a second name for the same file: durable as a name once
//!   its directory is fsynced, with the file's durable bytes.
//!
//! Real file systems often keep more (ext4's `data=ordered` commits a
//! rename's data with it), so for files a test that passes here passes
//! there; the reverse is what this layer is for. Directories are not
//! renamed or removed through the layer, so those are not modelled.
//!
//! # Use
//! Give a [`PowerLoss`] to [`crate::Options::power_loss`], write, call
//! [`PowerLoss::power_off`] (every file operation from then on fails, as a
//! dead disk would), drop the database, call [`PowerLoss::cut`], and reopen
//! with a new layer. [`PowerLoss::power_off_after`] instead lets a given
//! number of operations run first: a test can sweep the cut over every
//! point of a sequence. Only files written through [`crate::io::Fs`] are seen:
//! a file the engine writes with `std::fs` directly is invisible here, which
//! is why the engine has no such writes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard};

/// The layer. Shared (`Arc`) by every [`crate::io::Fs`] of one database.
#[derive(Debug, Default)]
pub struct PowerLoss {
    state: Mutex<State>,
}

/// What a [`PowerLoss::cut`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files present before the cut that are gone after it.
    pub files_dropped: usize,
    /// Files whose contents the cut changed (shortened, zeroed, restored).
    pub files_rewritten: usize,
    /// Files an undone unlink or rename brought back.
    pub files_restored: usize,
    /// Directories created after their parent's last fsync: removed.
    pub dirs_dropped: usize,
}

/// One file's identity, as an inode: a rename keeps it, a create makes a new
/// one.
#[derive(Debug)]
struct Inode {
    /// Bytes `[0, data_len)` are durable (covered by an fsync).
    data_len: u64,
    /// The durable file size; `[data_len, size)` is zeros (preallocation).
    size: u64,
    /// Once no path names it: its durable contents, read just before the
    /// unlink, rename-over or truncating create.
    detached: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    off: bool,
    /// Operations left before the power goes (`power_off_after`).
    ops_left: Option<u64>,
    /// Directories created through the layer whose entry no fsync of their
    /// parent has covered yet.
    new_dirs: std::collections::BTreeSet<PathBuf>,
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    /// The namespace as the running program sees it (tracked directories).
    live: HashMap<PathBuf, u64>,
    /// Per directory: the entries its last fsync made durable.
    durable: HashMap<PathBuf, BTreeMap<OsString, u64>>,
}

/// A path's directory; `.` for a bare relative name (what a caller fsyncs
/// for it).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl PowerLoss {
    pub fn new() -> Self {
        Self::default()
    }

    /// The lock every file operation holds from its check to its record, so
    /// a cut never lands between an operation and its bookkeeping.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The power goes: every later file operation through this layer fails.
    pub fn power_off(&self) {
        self.state.lock().off = true;
    }

    /// The next `ops` file operations run; the one after them, and every
    /// later one, fails as after [`PowerLoss::power_off`].
    pub fn power_off_after(&self, ops: u64) {
        self.state.lock().ops_left = Some(ops);
    }

    /// Whether the power has gone (by `power_off` or `power_off_after`).
    pub fn is_off(&self) -> bool {
        self.state.lock().off
    }

    /// Rewrites every directory the layer saw to its durable state (see the
    /// module doc). Turns the power off first if it is still on. Drop every
    /// database using the layer before calling this: the layer stays off,
    /// and the next open takes a new one.
    pub fn cut(&self) -> std::io::Result<CutReport> {
        let mut s = self.state.lock();
        s.off = true;
        let mut report = CutReport::default();
        let dirs: Vec<PathBuf> = s.durable.keys().cloned().collect();
        for dir in dirs {
            // Every byte to restore is read before anything is removed: a
            // durable name may point at a file now living under another name.
            let mut target: Vec<(OsString, Vec<u8>)> = Vec::new();
            for (name, ino) in &s.durable[&dir] {
                target.push((name.clone(), s.durable_bytes(*ino)?));
            }
            let mut present: Vec<PathBuf> = s
                .live
                .keys()
                .filter(|p| parent(p) == dir)
                .cloned()
                .collect();
            present.sort();
            for p in &present {
                let name = p.file_name().map(OsString::from).unwrap_or_default();
                match target.iter().find(|(n, _)| *n == name) {
                    None => report.files_dropped += 1,
                    Some((_, bytes)) => {
                        let now = std::fs::read(p)?;
                        if now != *bytes {
                            report.files_rewritten += 1;
                        }
                    }
                }
                std::fs::remove_file(p)?;
            }
            for (name, bytes) in &target {
                let p = dir.join(name);
                if !present.contains(&p) {
                    report.files_restored += 1;
                }
                let f = std::fs::File::create(&p)?;
                std::io::Write::write_all(&mut &f, bytes)?;
                f.sync_all()?;
            }
            std::fs::File::open(&dir)?.sync_all()?;
        }
        // Shallowest first: removing a directory takes the new ones in it.
        let new_dirs = std::mem::take(&mut s.new_dirs);
        for dir in &new_dirs {
            if dir.is_dir() {
                std::fs::remove_dir_all(dir)?;
                report.dirs_dropped += 1;
                if let Some(p) = dir.parent() {
                    std::fs::File::open(p)?.sync_all()?;
                }
            }
        }
        s.inodes.clear();
        s.live.clear();
        s.durable.clear();
        Ok(report)
    }
}

impl State {
    /// Fails every operation once the power is off (counting down
    /// `power_off_after`'s budget first).
    pub(crate) fn check(&mut self) -> std::io::Result<()> {
        match self.ops_left {
            Some(0) => self.off = true,
            Some(n) => self.ops_left = Some(n - 1),
            None => {}
        }
        if self.off {
            return Err(std::io::Error::other(
                "simulated power loss: the disk is gone",
            ));
        }
        Ok(())
    }

    fn new_inode(&mut self, data_len: u64, size: u64) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(
            self.next_ino,
            Inode {
                data_len,
                size,
                detached: None,
            },
        );
        self.next_ino
    }

    /// Starts tracking `dir`: what is in it now counts as durable (it was
    /// there before the layer was).
    fn track(&mut self, dir: &Path) {
        if self.durable.contains_key(dir) {
            return;
        }
        let mut names = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let ino = self.new_inode(meta.len(), meta.len());
                self.live.insert(e.path(), ino);
                names.insert(e.file_name(), ino);
            }
        }
        self.durable.insert(dir.to_path_buf(), names);
    }

    fn is_durably_named(&self, ino: u64) -> bool {
        self.durable.values().any(|m| m.values().any(|&i| i == ino))
    }

    /// The bytes inode `ino` holds after a power cut.
    fn durable_bytes(&self, ino: u64) -> std::io::Result<Vec<u8>> {
        let Some(node) = self.inodes.get(&ino) else {
            return Ok(Vec::new());
        };
        if let Some(b) = &node.detached {
            return Ok(b.clone());
        }
        let Some(path) = self.live.iter().find_map(|(p, &i)| (i == ino).then_some(p)) else {
            return Ok(Vec::new());
        };
        let now = std::fs::read(path)?;
        let mut b = now[..(node.data_len as usize).min(now.len())].to_vec();
        b.resize(node.size.max(node.data_len) as usize, 0);
        Ok(b)
    }

    /// `path` stops naming its inode; keep the inode's durable bytes if a
    /// durable directory entry still names it (the cut brings it back).
    fn detach(&mut self, path: &Path) -> std::io::Result<()> {
        let Some(&ino) = self.live.get(path) else {
            return Ok(());
        };
        // Only the last name's going detaches the inode: with a hard link
        // left, the cut reads the bytes through that name.
        let other_name = self.live.iter().any(|(p, &i)| i == ino && p != path);
        if !other_name && self.is_durably_named(ino) {
            let b = self.durable_bytes(ino)?;
            if let Some(n) = self.inodes.get_mut(&ino) {
                n.detached = Some(b);
            }
        }
        self.live.remove(path);
        Ok(())
    }

    pub(crate) fn before_create(&mut self, path: &Path) -> std::io::Result<()> {
        self.track(&parent(path));
        self.detach(path)
    }

    pub(crate) fn after_create(&mut self, path: &Path) {
        let ino = self.new_inode(0, 0);
        self.live.insert(path.to_path_buf(), ino);
    }

    /// An fsync/fdatasync of `path` covered its first `len` bytes.
    pub(crate) fn after_sync(&mut self, path: &Path, len: u64) {
        if let Some(n) = self.live.get(path).and_then(|i| self.inodes.get_mut(i)) {
            n.data_len = len;
            n.size = n.size.max(len);
        }
    }

    /// `path` was extended with zeros to `size` and fully synced at `len`
    /// bytes of data.
    pub(crate) fn after_preallocate(&mut self, path: &Path, len: u64, size: u64) {
        if let Some(n) = self.live.get(path).and_then(|i| self.inodes.get_mut(i)) {
            n.data_len = len;
            n.size = size;
        }
    }

    /// `path` was cut to `len` bytes and fully synced (`sync_all`).
    pub(crate) fn after_truncate(&mut self, path: &Path, len: u64) {
        self.track(&parent(path));
        if let Some(n) = self.live.get(path).and_then(|i| self.inodes.get_mut(i)) {
            n.data_len = len;
            n.size = len;
        }
    }

    /// Opening `path` for appending: its directory is tracked (an existing
    /// file counts as durable, as it was there before the layer).
    pub(crate) fn before_open(&mut self, path: &Path) {
        self.track(&parent(path));
    }

    pub(crate) fn before_link(&mut self, from: &Path, to: &Path) {
        self.track(&parent(from));
        self.track(&parent(to));
    }

    /// `to` now names `from`'s inode.
    pub(crate) fn after_link(&mut self, from: &Path, to: &Path) {
        if let Some(&ino) = self.live.get(from) {
            self.live.insert(to.to_path_buf(), ino);
        }
    }

    pub(crate) fn before_create_dir(&mut self, dir: &Path) {
        self.track(&parent(dir));
    }

    pub(crate) fn after_create_dir(&mut self, dir: &Path) {
        self.new_dirs.insert(dir.to_path_buf());
    }

    pub(crate) fn before_rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.track(&parent(from));
        self.track(&parent(to));
        self.detach(to)
    }

    pub(crate) fn after_rename(&mut self, from: &Path, to: &Path) {
        if let Some(ino) = self.live.remove(from) {
            self.live.insert(to.to_path_buf(), ino);
        }
    }

    pub(crate) fn before_remove(&mut self, path: &Path) -> std::io::Result<()> {
        self.track(&parent(path));
        self.detach(path)
    }

    /// A directory fsync: its entries as they are now become durable.
    pub(crate) fn after_sync_dir(&mut self, dir: &Path) {
        self.track(dir);
        self.new_dirs.retain(|d| parent(d) != dir);
        let names = self
            .live
            .iter()
            .filter(|(p, _)| parent(p) == dir)
            .filter_map(|(p, &i)| p.file_name().map(|n| (OsString::from(n), i)))
            .collect();
        self.durable.insert(dir.to_path_buf(), names);
        // Forget inodes no name reaches any more (and the bytes kept for
        // them): a long test would otherwise hold every deleted file.
        let reachable: std::collections::HashSet<u64> = self
            .durable
            .values()
            .flat_map(|m| m.values().copied())
            .chain(self.live.values().copied())
            .collect();
        self.inodes.retain(|ino, _| reachable.contains(ino));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Fs;
    use std::sync::Arc;

    fn fs(p: &Arc<PowerLoss>) -> Fs {
        Fs::new(None).with_power_loss(Some(p.clone()))
    }

    #[test]
    fn unsynced_data_and_entries_are_dropped_synced_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("old"), b"before the layer").expect("write");
        let p = Arc::new(PowerLoss::new());
        let fs = fs(&p);

        // Synced data in a synced entry: kept; the unsynced tail: dropped.
        let mut a = fs.create(&d.join("a")).expect("create");
        a.write_all(b"durable").expect("write");
        a.sync().expect("sync");
        a.write_all(b" lost").expect("write");
        fs.sync_dir(d).expect("sync dir");
        // Synced data, but the directory entry never synced: the file goes.
        let mut b = fs.create(&d.join("b")).expect("create");
        b.write_all(b"synced data, unsynced name").expect("write");
        b.sync().expect("sync");
        // Preallocated zeros stay; data written over them unsynced does not.
        let mut c = fs.create(&d.join("c")).expect("create");
        c.preallocate(16).expect("preallocate");
        c.write_all(b"zzz").expect("write");
        // An unlink and a rename with no directory fsync after them: undone.
        fs.remove(&d.join("old")).expect("remove");
        fs.rename(&d.join("a"), &d.join("a2")).expect("rename");
        drop((a, b, c));

        p.power_off();
        assert!(
            fs.create(&d.join("x")).is_err(),
            "a dead disk takes no file"
        );
        let r = p.cut().expect("cut");
        let read = |n: &str| std::fs::read(d.join(n)).ok();
        assert_eq!(read("a").as_deref(), Some(&b"durable"[..]));
        assert_eq!(read("a2"), None);
        assert_eq!(read("b"), None);
        assert_eq!(read("c"), None, "c's entry was synced only with a's");
        assert_eq!(read("old").as_deref(), Some(&b"before the layer"[..]));
        assert_eq!(r.files_restored, 2, "{r:?}");
    }

    #[test]
    fn a_synced_directory_keeps_a_preallocated_file_with_its_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let p = Arc::new(PowerLoss::new());
        let fs = fs(&p);
        let mut c = fs.create(&d.join("c")).expect("create");
        c.preallocate(8).expect("preallocate");
        fs.sync_dir(d).expect("sync dir");
        c.write_all(b"abc").expect("write");
        c.sync().expect("sync");
        c.write_all(b"def").expect("write");
        fs.write_atomic(d, "m", b"manifest").expect("atomic");
        drop(c);
        p.cut().expect("cut");
        assert_eq!(
            std::fs::read(d.join("c")).expect("c"),
            b"abc\0\0\0\0\0".to_vec()
        );
        assert_eq!(std::fs::read(d.join("m")).expect("m"), b"manifest".to_vec());
        assert!(!d.join("m.tmp").exists());
    }

    #[test]
    fn an_unsynced_directory_goes_with_its_files_and_a_link_keeps_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let p = Arc::new(PowerLoss::new());
        let fs = fs(&p);
        // `kept/` is synced in its parent; `lost/` is not, so a file synced
        // inside it (data and entry) still goes with it.
        fs.create_dir(&d.join("kept")).expect("mkdir");
        fs.sync_dir(d).expect("sync parent");
        fs.create_dir(&d.join("lost")).expect("mkdir");
        let mut f = fs.create(&d.join("lost/f")).expect("create");
        f.write_all(b"synced").expect("write");
        f.sync().expect("sync");
        fs.sync_dir(&d.join("lost")).expect("sync lost/");
        // A temp file linked to its final name, the temp name removed and
        // the directory synced: the final name keeps the synced bytes only.
        let mut t = fs.create(&d.join("kept/tmp")).expect("create");
        t.write_all(b"data").expect("write");
        t.sync().expect("sync");
        t.write_all(b" tail").expect("write");
        fs.hard_link(&d.join("kept/tmp"), &d.join("kept/final"))
            .expect("link");
        let taken = fs.hard_link(&d.join("kept/tmp"), &d.join("kept/final"));
        assert!(
            matches!(&taken, Err(crate::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{taken:?}"
        );
        fs.remove(&d.join("kept/tmp")).expect("remove");
        fs.sync_dir(&d.join("kept")).expect("sync kept/");
        // A link with no directory fsync after it: undone.
        fs.hard_link(&d.join("kept/final"), &d.join("kept/again"))
            .expect("link");
        drop((f, t));
        let r = p.cut().expect("cut");
        assert!(!d.join("lost").exists());
        assert_eq!(r.dirs_dropped, 1, "{r:?}");
        assert_eq!(std::fs::read(d.join("kept/final")).expect("final"), b"data");
        assert!(!d.join("kept/tmp").exists());
        assert!(!d.join("kept/again").exists());
    }

    #[test]
    fn the_power_goes_after_the_given_number_of_operations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let p = Arc::new(PowerLoss::new());
        p.power_off_after(2);
        let fs = fs(&p);
        let mut f = fs.create(&d.join("a")).expect("op 1");
        f.write_all(b"x").expect("op 2");
        assert!(!p.is_off());
        assert!(f.sync().is_err(), "op 3 finds the power gone");
        assert!(p.is_off());
        assert!(fs.create(&d.join("b")).is_err());
    }
}

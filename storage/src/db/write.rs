//! The write path: group commit into the WAL and the memtable, memtable
//! rotation when it fills, and the interval WAL sync.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::batch::WriteBatch;
use crate::memtable::Memtable;
use crate::options::SyncPolicy;
use crate::wal::WalWriter;
use crate::{Error, Result};

use super::*;

impl Inner {
    /// Group commit: queue this write; the first writer without a leader leads.
    ///
    /// Fast path: with no leader and nobody queued, the writer leads at once
    /// and commits its own request from the stack. Otherwise it queues an
    /// `Arc` and sleeps; when the leader finishes, the first writer still
    /// queued becomes the next leader and takes everything queued meanwhile,
    /// so under load one WAL write (and fsync) covers many writers.
    pub(super) fn submit(&self, batch: WriteBatch, sync: bool, force_rotate: bool) -> Result<()> {
        let req = WriteRequest {
            batch,
            sync,
            force_rotate,
        };
        let mut q = self.writers.lock();
        if !q.leader_active && q.queue.is_empty() {
            q.leader_active = true;
            drop(q);
            let r = self.commit_group(&[&req]);
            // No follower's result was set: wake only writers queued meanwhile.
            self.finish_leading(false);
            return r;
        }
        let me = Arc::new(PendingWrite {
            req,
            result: Mutex::new(None),
        });
        q.queue.push(me.clone());
        loop {
            if let Some(r) = me.result.lock().take() {
                return r;
            }
            if !q.leader_active {
                break;
            }
            self.writer_cv.wait(&mut q);
        }
        q.leader_active = true;
        let spare = std::mem::take(&mut q.spare);
        let mut group = std::mem::replace(&mut q.queue, spare);
        drop(q);
        let reqs: Vec<&WriteRequest> = group.iter().map(|w| &w.req).collect();
        let r = self.commit_group(&reqs);
        drop(reqs);
        for w in &group {
            if !Arc::ptr_eq(w, &me) {
                *w.result.lock() = Some(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(dup_error(e)),
                });
            }
        }
        group.clear();
        let mut q = self.writers.lock();
        q.spare = group;
        drop(q);
        // Followers whose results were just set are asleep on the condvar and
        // must be woken even when nobody new is queued.
        self.finish_leading(true);
        r
    }

    /// Hands leadership on: wakes followers (whose results are set) and any
    /// queued writer, one of which becomes the next leader.
    pub(super) fn finish_leading(&self, followers_done: bool) {
        let mut q = self.writers.lock();
        q.leader_active = false;
        if followers_done || !q.queue.is_empty() {
            self.writer_cv.notify_all();
        }
    }

    /// The leader's work for one group: make room, assign sequence numbers, one
    /// WAL write (+ fsync if any writer asked), memtable inserts, then publish
    /// the new visible sequence number.
    pub(super) fn commit_group(&self, group: &[&WriteRequest]) -> Result<()> {
        let force = group.iter().any(|w| w.force_rotate);
        let sync = self.opts.sync_policy == SyncPolicy::Always || group.iter().any(|w| w.sync);
        let count: u64 = group.iter().map(|w| w.batch.len() as u64).sum();
        let mut st = self.state.lock();
        self.make_room(&mut st, force)?;
        let first_seq = st.last_seq + 1;
        st.last_seq += count;
        let mem = st.mem.clone();
        drop(st);
        if count == 0 {
            return Ok(());
        }
        {
            let mut wal = self.wal.lock();
            let mut seq = first_seq;
            let before = wal.len();
            for w in group.iter().filter(|w| !w.batch.is_empty()) {
                wal.add_record_with(|buf| w.batch.encode_wal_payload(seq, buf));
                seq += w.batch.len() as u64;
            }
            let written = wal
                .flush()
                .and_then(|_| if sync { wal.sync() } else { Ok(()) });
            if let Err(e) = written {
                // The WAL may now end in a partial record. Refuse further writes
                // so nothing is appended after it; reopening cuts the torn tail.
                self.set_bg_error("WAL write", &e);
                return Err(e);
            }
            self.stats
                .wal_bytes
                .fetch_add(wal.len() - before, Ordering::Relaxed);
        }
        let mut seq = first_seq;
        let mut user_bytes = 0u64;
        for w in group {
            for (kind, k, v) in w.batch.iter() {
                mem.insert(k, seq, kind, v);
                seq += 1;
            }
            user_bytes += w.batch.user_bytes() as u64;
        }
        self.stats
            .user_bytes
            .fetch_add(user_bytes, Ordering::Relaxed);
        self.stats.writes.fetch_add(count, Ordering::Relaxed);
        self.visible_seq.store(seq - 1, Ordering::Release);
        Ok(())
    }

    /// Ensures the memtable has room, stalling writers while L0 or the
    /// immutable-memtable queue is over its limit.
    pub(super) fn make_room(
        &self,
        st: &mut parking_lot::MutexGuard<'_, State>,
        force: bool,
    ) -> Result<()> {
        let mut slowed = false;
        let mut force = force;
        loop {
            if let Some(e) = &st.bg_error {
                return Err(Error::Background {
                    job: "background",
                    reason: e.clone(),
                });
            }
            if self.shutdown.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let l0 = st.version.levels[0].len();
            let need_rotate = force || st.mem.approx_bytes() >= self.opts.write_buffer_bytes;
            if l0 >= self.opts.l0_slowdown_trigger && !slowed && !force {
                // Spread the delay over many writes rather than stopping
                // later: gives compaction a share of the CPU.
                let t = Instant::now();
                parking_lot::MutexGuard::unlocked(st, || {
                    std::thread::sleep(Duration::from_millis(1))
                });
                self.stats.add_stall(t.elapsed());
                slowed = true;
                continue;
            }
            if need_rotate
                && (st.imms.len() >= self.opts.max_immutable_memtables
                    || l0 >= self.opts.l0_stop_trigger)
            {
                let t = Instant::now();
                self.bg_cv.notify_all();
                self.bg_cv.wait_for(st, Duration::from_millis(100));
                self.stats.add_stall(t.elapsed());
                continue;
            }
            if need_rotate {
                if !st.mem.is_empty() {
                    self.rotate(st)?;
                }
                force = false;
                continue;
            }
            return Ok(());
        }
    }

    /// Switches to a new WAL and memtable; the old memtable waits for flush.
    pub(super) fn rotate(&self, st: &mut State) -> Result<()> {
        let number = st.next_file;
        st.next_file += 1;
        let new_wal = WalWriter::create_preallocated(&self.fs, &self.dir, number)?;
        // The new WAL's directory entry must be durable before any write it
        // acknowledges: a power cut could otherwise drop the whole file while
        // its synced contents are counted on (RocksDB fsyncs the WAL directory
        // after creating a log for the same reason).
        self.fs.sync_dir(&self.dir)?;
        {
            let mut wal = self.wal.lock();
            wal.sync()?;
            *wal = new_wal;
        }
        let old = std::mem::replace(&mut st.mem, Arc::new(Memtable::new(number)));
        st.imms.push_back(old);
        self.install_super_version(st);
        self.bg_cv.notify_all();
        Ok(())
    }

    pub(super) fn sync_loop(&self) {
        let SyncPolicy::Interval(every) = self.opts.sync_policy else {
            return;
        };
        loop {
            {
                let mut st = self.state.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                self.bg_cv.wait_for(&mut st, every);
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
            }
            if let Err(e) = self.wal.lock().sync() {
                self.set_bg_error("WAL sync", &e);
            }
        }
    }
}

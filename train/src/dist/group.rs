//! A process group over TCP: rendezvous, then a ring of connections, and the
//! collectives on it.
//!
//! ```text
//!   rendezvous: every rank → rank 0 (its ring address) ; rank 0 → every rank (the table)
//!   ring:       rank r sends to r+1 and receives from r−1 (mod world)
//! ```
//!
//! Ring all-reduce (Patarasuk & Yuan, 2009; Baidu's allreduce; NCCL's ring):
//! the buffer is cut into `world` chunks. Reduce-scatter: at step s rank r
//! sends chunk (r−s) and adds the chunk (r−s−1) it receives, so after
//! world−1 steps rank r holds chunk (r+1) summed over all ranks. All-gather:
//! world−1 more steps pass the finished chunks around. Each rank sends
//! 2·(world−1)/world of the buffer, the bandwidth lower bound, whatever the
//! world size. Every chunk is summed in the same ring order on every rank,
//! so all ranks end with bit-identical values.
//!
//! Each message carries a header (magic, op, sequence number, byte length)
//! so a stray or forged connection, or ranks that disagree about the next
//! collective, fail with an error naming the peer instead of adding garbage.
//! Every socket has a read and write timeout: a rank that died or hangs makes
//! its neighbours fail within that time, never wait forever.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

const MAGIC: u32 = 0x4D4C_5352; // "MLSR"

/// The chunk of a `len`-element buffer that chunk index `i` of `world` covers.
pub fn chunk(len: usize, world: usize, i: usize) -> Range<usize> {
    let base = len / world;
    let extra = len % world;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// Bytes and seconds spent in collectives (for the metrics and the bench).
#[derive(Clone, Copy, Debug, Default)]
pub struct CommStats {
    pub bytes_sent: u64,
    pub seconds: f64,
}

/// One rank's membership in the group.
#[derive(Debug)]
pub struct ProcessGroup {
    pub rank: usize,
    pub world: usize,
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    seq: u64,
    pub stats: CommStats,
}

#[derive(Clone, Copy, Debug)]
#[repr(u32)]
enum Op {
    ReduceScatter = 1,
    AllGather = 2,
    Broadcast = 3,
}

impl ProcessGroup {
    /// A group of one: every collective is the identity.
    pub fn single() -> ProcessGroup {
        ProcessGroup {
            rank: 0,
            world: 1,
            next: None,
            prev: None,
            seq: 0,
            stats: CommStats::default(),
        }
    }

    /// Joins the group: rank 0 listens on `rendezvous`; the others connect to
    /// it, within `timeout`. `token` (shared by the launcher) must match on
    /// every connection.
    pub fn connect(
        rank: usize,
        world: usize,
        rendezvous: &str,
        token: u64,
        timeout: Duration,
    ) -> Result<ProcessGroup> {
        if world <= 1 {
            return Ok(ProcessGroup::single());
        }
        let rdv = Rendezvous::new(rank, rendezvous, token, timeout)?;
        let [ring] = bind_rings::<1>(rendezvous)?;
        let table = rdv.exchange(rank, world, &[local_addr(&ring, rendezvous)?])?;
        let members: Vec<SocketAddr> = table.iter().map(|a| a[0]).collect();
        rdv.ring("ring", rank, &members, &ring)
    }

    /// Joins a (dp × tp) mesh through one rendezvous and returns
    /// `(tensor group, data group)`. Global rank r is tensor rank r % tp of
    /// data rank r / tp: the tensor group is the tp consecutive ranks of one
    /// data rank, the data group every tp-th rank. Each rank listens for its
    /// two rings on ephemeral ports and publishes both through the one
    /// rendezvous, so the mesh needs no port beyond the launcher's (a run of
    /// "assumed free" ports after it collided with other processes' ephemeral
    /// ports).
    pub fn connect_mesh(
        rank: usize,
        world: usize,
        tp: usize,
        rendezvous: &str,
        token: u64,
        timeout: Duration,
    ) -> Result<(ProcessGroup, ProcessGroup)> {
        if tp == 0 || !world.is_multiple_of(tp) {
            return Err(rdv_err(
                rendezvous,
                format!("tensor-parallel size {tp} does not divide world size {world}"),
            ));
        }
        if world <= 1 {
            return Ok((ProcessGroup::single(), ProcessGroup::single()));
        }
        let (dp_rank, tp_rank, dp) = (rank / tp, rank % tp, world / tp);
        let rdv = Rendezvous::new(rank, rendezvous, token, timeout)?;
        let [tp_ring, dp_ring] = bind_rings::<2>(rendezvous)?;
        let mine = [
            local_addr(&tp_ring, rendezvous)?,
            local_addr(&dp_ring, rendezvous)?,
        ];
        let table = rdv.exchange(rank, world, &mine)?;
        // The tensor ring first on every rank: connecting to a ring's next
        // rank completes in the listener's backlog, so neither ring waits on
        // the other and the order cannot deadlock.
        let tp_group = if tp > 1 {
            let members: Vec<SocketAddr> = (0..tp).map(|j| table[dp_rank * tp + j][0]).collect();
            rdv.ring("tensor ring", tp_rank, &members, &tp_ring)?
        } else {
            ProcessGroup::single()
        };
        let dp_group = if dp > 1 {
            let members: Vec<SocketAddr> = (0..dp).map(|i| table[i * tp + tp_rank][1]).collect();
            rdv.ring("data ring", dp_rank, &members, &dp_ring)?
        } else {
            ProcessGroup::single()
        };
        Ok((tp_group, dp_group))
    }

    fn coll_err(&self, op: &'static str, peer: usize, reason: impl Into<String>) -> TrainError {
        TrainError::Collective {
            rank: self.rank,
            peer,
            op,
            reason: reason.into(),
        }
    }

    /// Sends `send` to the next rank while receiving `recv.len()` floats from
    /// the previous one (a thread per direction: two ranks that both write
    /// first would otherwise fill each other's socket buffers and deadlock).
    fn exchange(
        &mut self,
        op: Op,
        name: &'static str,
        send: &[f32],
        recv: &mut [f32],
    ) -> Result<()> {
        let (rank, world) = (self.rank, self.world);
        let (next_rank, prev_rank) = ((rank + 1) % world, (rank + world - 1) % world);
        let seq = self.seq;
        self.seq += 1;
        let mut out = Vec::with_capacity(24 + 4 * send.len());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(op as u32).to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&((4 * send.len()) as u64).to_le_bytes());
        for x in send {
            out.extend_from_slice(&x.to_le_bytes());
        }
        let next = self.next.as_mut().expect("world > 1 has a ring");
        let prev = self.prev.as_mut().expect("world > 1 has a ring");
        let started = Instant::now();
        let (sent, received) = std::thread::scope(|s| {
            let sender = s.spawn(|| next.write_all(&out));
            let mut hdr = [0u8; 24];
            let r = (|| -> std::result::Result<Vec<u8>, String> {
                prev.read_exact(&mut hdr).map_err(describe_io)?;
                let magic = u32::from_le_bytes(hdr[0..4].try_into().expect("4"));
                let their_op = u32::from_le_bytes(hdr[4..8].try_into().expect("4"));
                let their_seq = u64::from_le_bytes(hdr[8..16].try_into().expect("8"));
                let len = u64::from_le_bytes(hdr[16..24].try_into().expect("8"));
                if magic != MAGIC
                    || their_op != op as u32
                    || their_seq != seq
                    || len != 4 * recv.len() as u64
                {
                    return Err(format!(
                        "protocol mismatch: got op {their_op} seq {their_seq} {len} bytes, expected op {} seq {seq} {} bytes",
                        op as u32,
                        4 * recv.len()
                    ));
                }
                let mut body = vec![0u8; len as usize];
                prev.read_exact(&mut body).map_err(describe_io)?;
                Ok(body)
            })();
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
            (sent, r)
        });
        sent.map_err(|e| self.coll_err(name, next_rank, describe_io(e)))?;
        let body = received.map_err(|e| self.coll_err(name, prev_rank, e))?;
        for (dst, b) in recv.iter_mut().zip(body.chunks_exact(4)) {
            *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        self.stats.bytes_sent += out.len() as u64;
        self.stats.seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Sums `buf` over the ranks, leaving rank r's chunk (r+1) mod world
    /// complete (the others partial). Returns that chunk's range.
    pub fn reduce_scatter(&mut self, buf: &mut [f32]) -> Result<Range<usize>> {
        let (r, w) = (self.rank, self.world);
        if w == 1 {
            return Ok(0..buf.len());
        }
        let mut recv = Vec::new();
        for s in 0..w - 1 {
            let send_c = chunk(buf.len(), w, (r + w - s) % w);
            let recv_c = chunk(buf.len(), w, (r + 2 * w - s - 1) % w);
            recv.resize(recv_c.len(), 0.0);
            let send = buf[send_c].to_vec();
            self.exchange(Op::ReduceScatter, "reduce-scatter", &send, &mut recv)?;
            for (a, b) in buf[recv_c].iter_mut().zip(&recv) {
                *a += b;
            }
        }
        Ok(self.owned_chunk(buf.len()))
    }

    /// The chunk rank r holds complete after [`Self::reduce_scatter`].
    pub fn owned_chunk(&self, len: usize) -> Range<usize> {
        chunk(len, self.world, (self.rank + 1) % self.world)
    }

    /// Given each rank's owned chunk complete, makes every chunk complete on
    /// every rank.
    pub fn all_gather(&mut self, buf: &mut [f32]) -> Result<()> {
        let (r, w) = (self.rank, self.world);
        if w == 1 {
            return Ok(());
        }
        let mut recv = Vec::new();
        for s in 0..w - 1 {
            let send_c = chunk(buf.len(), w, (r + 1 + w - s) % w);
            let recv_c = chunk(buf.len(), w, (r + w - s) % w);
            recv.resize(recv_c.len(), 0.0);
            let send = buf[send_c].to_vec();
            self.exchange(Op::AllGather, "all-gather", &send, &mut recv)?;
            buf[recv_c].copy_from_slice(&recv);
        }
        Ok(())
    }

    /// Sums `buf` over the ranks (reduce-scatter then all-gather).
    pub fn all_reduce(&mut self, buf: &mut [f32]) -> Result<()> {
        self.reduce_scatter(buf)?;
        self.all_gather(buf)
    }

    /// Rank `root`'s `buf` on every rank, passed around the ring.
    pub fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let (r, w) = (self.rank, self.world);
        if w == 1 {
            return Ok(());
        }
        // Ring order from the root: root sends, each other rank receives and
        // (unless it is the last) forwards. One exchange per hop; ranks not
        // in a hop send an empty message so sequence numbers stay aligned.
        for hop in 0..w - 1 {
            let sender = (root + hop) % w;
            let receiver = (sender + 1) % w;
            let send = if r == sender {
                buf.to_vec()
            } else {
                Vec::new()
            };
            let mut recv = vec![0f32; if r == receiver { buf.len() } else { 0 }];
            self.exchange(Op::Broadcast, "broadcast", &send, &mut recv)?;
            if r == receiver {
                buf.copy_from_slice(&recv);
            }
        }
        Ok(())
    }
}

/// One rendezvous: where rank 0 listens, the group's token, the socket
/// timeout and the deadline for the whole join.
struct Rendezvous<'a> {
    addr: &'a str,
    token: u64,
    timeout: Duration,
    deadline: Instant,
    /// Rank 0's listener, bound before any ring listener: the launcher freed
    /// this port just before, and a ring's ephemeral port could take it.
    listener: Option<TcpListener>,
}

/// A hello's (magic, token, rank).
fn parse_hello(hdr: &[u8; 20]) -> (u32, u64, usize) {
    (
        u32::from_le_bytes(hdr[0..4].try_into().expect("4")),
        u64::from_le_bytes(hdr[4..12].try_into().expect("8")),
        u64::from_le_bytes(hdr[12..20].try_into().expect("8")) as usize,
    )
}

impl<'a> Rendezvous<'a> {
    fn new(rank: usize, addr: &'a str, token: u64, timeout: Duration) -> Result<Self> {
        let listener = if rank == 0 {
            Some(
                TcpListener::bind(addr)
                    .map_err(|e| rdv_err(addr, format!("rank 0 binds the rendezvous: {e}")))?,
            )
        } else {
            None
        };
        Ok(Rendezvous {
            addr,
            token,
            timeout,
            deadline: Instant::now() + timeout,
            listener,
        })
    }

    fn hello(&self, rank: usize) -> Vec<u8> {
        let mut hello = Vec::with_capacity(20);
        hello.extend_from_slice(&MAGIC.to_le_bytes());
        hello.extend_from_slice(&self.token.to_le_bytes());
        hello.extend_from_slice(&(rank as u64).to_le_bytes());
        hello
    }

    /// Every rank sends rank 0 its `mine` addresses; rank 0 answers every
    /// rank with the whole table (`table[rank][i]`).
    fn exchange(
        &self,
        rank: usize,
        world: usize,
        mine: &[SocketAddr],
    ) -> Result<Vec<Vec<SocketAddr>>> {
        let at = self.addr;
        if rank >= world {
            return Err(rdv_err(
                at,
                format!("rank {rank} is not below world size {world}"),
            ));
        }
        let parse = |text: &str| -> Result<Vec<SocketAddr>> {
            text.split(',')
                .map(|a| {
                    a.parse()
                        .map_err(|e| rdv_err(at, format!("address {a:?}: {e}")))
                })
                .collect()
        };
        let join = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if rank != 0 {
            let mut s = connect_until(at, self.deadline)?;
            set_timeouts(&s, self.timeout);
            s.write_all(&self.hello(rank))
                .map_err(|e| rdv_err(at, e.to_string()))?;
            write_string(&mut s, &join(mine)).map_err(|e| rdv_err(at, e))?;
            let text = read_string(&mut s).map_err(|e| rdv_err(at, e))?;
            let table = text.split(';').map(parse).collect::<Result<Vec<_>>>()?;
            if table.len() != world || table.iter().any(|a| a.len() != mine.len()) {
                return Err(rdv_err(
                    at,
                    format!("a table that is not this group's: {text:?}"),
                ));
            }
            return Ok(table);
        }
        let Some(l) = &self.listener else {
            return Err(rdv_err(at, "rank 0 without its rendezvous listener"));
        };
        let mut table = vec![mine.to_vec(); world];
        let mut conns = Vec::with_capacity(world - 1);
        for _ in 1..world {
            let mut s = accept_until(l, self.deadline, at)?;
            set_timeouts(&s, self.timeout);
            let mut hdr = [0u8; 20];
            s.read_exact(&mut hdr)
                .map_err(|e| rdv_err(at, format!("read a hello: {e}")))?;
            let (magic, their_token, r) = parse_hello(&hdr);
            if magic != MAGIC || their_token != self.token || r == 0 || r >= world {
                return Err(rdv_err(
                    at,
                    format!(
                        "a hello that is not this group's (rank {r}, token match {})",
                        their_token == self.token
                    ),
                ));
            }
            let addrs = parse(&read_string(&mut s).map_err(|e| rdv_err(at, e))?)?;
            if addrs.len() != mine.len() {
                return Err(rdv_err(
                    at,
                    format!(
                        "rank {r} sent {} addresses, expected {}",
                        addrs.len(),
                        mine.len()
                    ),
                ));
            }
            table[r] = addrs;
            conns.push(s);
        }
        let text = table.iter().map(|a| join(a)).collect::<Vec<_>>().join(";");
        for mut s in conns {
            write_string(&mut s, &text).map_err(|e| rdv_err(at, e))?;
        }
        Ok(table)
    }

    /// Closes the ring of `members` (ring addresses by group rank): connect
    /// to the next rank, accept the previous one on `listener`; each side
    /// says who it is.
    fn ring(
        &self,
        what: &'static str,
        rank: usize,
        members: &[SocketAddr],
        listener: &TcpListener,
    ) -> Result<ProcessGroup> {
        let world = members.len();
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let mut next = connect_until(&members[next_rank].to_string(), self.deadline)?;
        set_timeouts(&next, self.timeout);
        next.write_all(&self.hello(rank))
            .map_err(|e| rdv_err(self.addr, e.to_string()))?;
        let mut prev = accept_until(listener, self.deadline, self.addr)?;
        set_timeouts(&prev, self.timeout);
        let mut hdr = [0u8; 20];
        prev.read_exact(&mut hdr)
            .map_err(|e| rdv_err(self.addr, format!("{what} hello: {e}")))?;
        let (magic, their_token, r) = parse_hello(&hdr);
        if magic != MAGIC || their_token != self.token || r != prev_rank {
            return Err(rdv_err(
                self.addr,
                format!("{what} hello from rank {r}, expected rank {prev_rank} of this group"),
            ));
        }
        next.set_nodelay(true).ok();
        prev.set_nodelay(true).ok();
        Ok(ProcessGroup {
            rank,
            world,
            next: Some(next),
            prev: Some(prev),
            seq: 0,
            stats: CommStats::default(),
        })
    }
}

/// `N` ring listeners on the rendezvous host, each on an ephemeral port.
fn bind_rings<const N: usize>(rendezvous: &str) -> Result<[TcpListener; N]> {
    let host = rendezvous
        .rsplit_once(':')
        .map(|(h, _)| h)
        .ok_or_else(|| rdv_err(rendezvous, "not host:port"))?;
    let mut out = Vec::with_capacity(N);
    for _ in 0..N {
        out.push(
            TcpListener::bind((host, 0))
                .map_err(|e| rdv_err(rendezvous, format!("bind the ring port: {e}")))?,
        );
    }
    Ok(out.try_into().expect("N listeners"))
}

fn local_addr(l: &TcpListener, rendezvous: &str) -> Result<SocketAddr> {
    l.local_addr()
        .map_err(|e| rdv_err(rendezvous, e.to_string()))
}

fn describe_io(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "connection closed (the peer exited)".into(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "timed out (the peer is hung or too slow)".into()
        }
        _ => e.to_string(),
    }
}

fn rdv_err(addr: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Rendezvous {
        addr: addr.to_string(),
        reason: reason.into(),
    }
}

fn set_timeouts(s: &TcpStream, t: Duration) {
    s.set_read_timeout(Some(t)).ok();
    s.set_write_timeout(Some(t)).ok();
}

fn connect_until(addr: &str, deadline: Instant) -> Result<TcpStream> {
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(rdv_err(
                    addr,
                    format!("connect: {e} (gave up at the deadline)"),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn accept_until(l: &TcpListener, deadline: Instant, addr: &str) -> Result<TcpStream> {
    l.set_nonblocking(true)
        .map_err(|e| rdv_err(addr, e.to_string()))?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| rdv_err(addr, e.to_string()))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(rdv_err(addr, "no peer connected before the deadline"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(rdv_err(addr, format!("accept: {e}"))),
        }
    }
}

fn write_string(s: &mut TcpStream, text: &str) -> std::result::Result<(), String> {
    s.write_all(&(text.len() as u32).to_le_bytes())
        .and_then(|()| s.write_all(text.as_bytes()))
        .map_err(describe_io)
}

fn read_string(s: &mut TcpStream) -> std::result::Result<String, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(describe_io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err(format!("a {len}-byte string is not this protocol"));
    }
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).map_err(describe_io)?;
    String::from_utf8(b).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    }

    fn run_group<T: Send>(world: usize, f: impl Fn(ProcessGroup) -> T + Sync) -> Vec<T> {
        let addr = free_addr();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    let (addr, f) = (&addr, &f);
                    s.spawn(move || {
                        f(
                            ProcessGroup::connect(r, world, addr, 42, Duration::from_secs(10))
                                .expect("connect"),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("rank")).collect()
        })
    }

    #[test]
    fn ring_collectives_agree_with_the_plain_sum_for_3_ranks() {
        let len = 1001;
        let input = |r: usize| {
            (0..len)
                .map(|i| (r * len + i) as f32 * 0.5)
                .collect::<Vec<f32>>()
        };
        let want: Vec<f32> = (0..len)
            .map(|i| (0..3).map(|r| input(r)[i]).sum())
            .collect();
        let out = run_group(3, |mut g| {
            let mut b = input(g.rank);
            g.all_reduce(&mut b).expect("all-reduce");
            let mut c = if g.rank == 1 {
                input(1)
            } else {
                vec![0.0; len]
            };
            g.broadcast(&mut c, 1).expect("broadcast");
            (b, c, g.stats.bytes_sent)
        });
        for (b, c, bytes) in &out {
            assert_eq!(b, &want);
            assert_eq!(c, &input(1));
            // all-reduce: 2·(w−1)/w of the buffer plus headers.
            assert!(*bytes as f64 >= 2.0 * 2.0 / 3.0 * 4.0 * len as f64);
        }
        assert_eq!(out[0].0, out[1].0, "bit-identical on every rank");
    }

    #[test]
    fn a_dead_peer_fails_the_collective_naming_it_within_the_timeout() {
        let addr = free_addr();
        let started = Instant::now();
        let errs = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|r| {
                    let addr = &addr;
                    s.spawn(move || {
                        let mut g = ProcessGroup::connect(r, 2, addr, 7, Duration::from_secs(2))
                            .expect("connect");
                        if r == 1 {
                            drop(g); // rank 1 "dies" before the collective
                            return None;
                        }
                        let mut b = vec![1.0f32; 100];
                        Some(g.all_reduce(&mut b).expect_err("peer is gone"))
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        let e = errs[0].to_string();
        assert!(e.contains("rank 0") && e.contains("rank 1"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(8));
    }

    #[test]
    fn a_connection_with_the_wrong_token_is_refused() {
        let addr = free_addr();
        std::thread::scope(|s| {
            let a = s.spawn(|| ProcessGroup::connect(0, 2, &addr, 1, Duration::from_secs(3)));
            let b = s.spawn(|| ProcessGroup::connect(1, 2, &addr, 2, Duration::from_secs(3)));
            let e = a.join().expect("rank 0").expect_err("forged token");
            assert!(e.to_string().contains("not this group's"), "{e}");
            let _ = b.join();
        });
    }

    #[test]
    fn a_2x3_mesh_reduces_within_its_tensor_and_data_groups() {
        let (tp, world) = (3, 6);
        let addr = free_addr();
        let out = std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    let addr = &addr;
                    s.spawn(move || {
                        let (mut t, mut d) = ProcessGroup::connect_mesh(
                            r,
                            world,
                            tp,
                            addr,
                            9,
                            Duration::from_secs(10),
                        )
                        .expect("mesh");
                        let mut bt = vec![r as f32; 7];
                        t.all_reduce(&mut bt).expect("tensor all-reduce");
                        let mut bd = vec![r as f32; 5];
                        d.all_reduce(&mut bd).expect("data all-reduce");
                        (t.rank, t.world, d.rank, d.world, bt[0], bd[0])
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("rank"))
                .collect::<Vec<_>>()
        });
        for (r, &(tr, tw, dr, dw, st, sd)) in out.iter().enumerate() {
            assert_eq!(
                (tr, tw, dr, dw),
                (r % tp, tp, r / tp, world / tp),
                "rank {r}"
            );
            // Tensor group of replica d: ranks d·tp .. d·tp+tp; data group of
            // tensor rank t: t, t+tp.
            let base = (r / tp) * tp;
            assert_eq!(st, (base..base + tp).sum::<usize>() as f32, "rank {r}");
            assert_eq!(sd, (r % tp + (r % tp + tp)) as f32, "rank {r}");
        }
    }

    #[test]
    fn a_mesh_whose_tensor_size_does_not_divide_the_world_is_refused() {
        let e = ProcessGroup::connect_mesh(0, 4, 3, "127.0.0.1:1", 1, Duration::from_secs(1))
            .expect_err("3 does not divide 4");
        assert!(e.to_string().contains("does not divide"), "{e}");
    }
}

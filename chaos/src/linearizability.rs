//! A linearizability checker for register histories (Wing & Gong's search with
//! Lowe's memoization, as in Porcupine).
//!
//! A history is a set of operations, each with an invocation time, a return
//! time and an observed output. It is *linearizable* if there is a total order
//! of the operations that (1) respects real time: an operation that returned
//! before another was invoked comes first, and (2) is a legal sequential run of
//! the model (a register: reads return the last write). Operations whose
//! outcome is unknown (a write that timed out) get a return time of +∞: they
//! may take effect at any point after their invocation, or never (linearized
//! at the very end, which no later read observes).
//!
//! # The search (Porcupine's `checkSingle`)
//! Events (calls and returns) sit in a doubly linked list in time order. Walk
//! it: at a call, try to linearize that operation now (apply it to the model;
//! the output must match). If the model accepts and the pair (set of
//! linearized operations, model state) is new, lift the call and its return out
//! of the list, push it on a stack, and start again from the head. At a return
//! whose call is still in the list, no pending operation can be linearized
//! before it: backtrack (pop the stack, re-insert, try the next call). The list
//! emptying means a linearization was found. The memo of (bitset, state) pairs
//! prunes the otherwise exponential search.
//!
//! Registers are independent, so histories are checked key by key
//! (P-compositionality), which keeps each search small.

use std::collections::{BTreeMap, HashSet};

/// What an operation did, with what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `value`. Always succeeds when it takes effect.
    Put { value: String },
    /// Read; `None` = the key was absent.
    Get { observed: Option<String> },
    /// Compare-and-set: write `new` if the value is `expected` (`None` =
    /// absent). `succeeded` is `None` when the outcome is unknown.
    Cas {
        expected: Option<String>,
        new: String,
        succeeded: Option<bool>,
    },
    /// Delete; always succeeds when it takes effect.
    Delete,
}

/// One operation in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    /// Invocation time (any monotonic unit, e.g. ns since the run started).
    pub call: u64,
    /// Return time; `u64::MAX` when the outcome is unknown.
    pub ret: u64,
    pub op: Op,
}

impl Operation {
    pub fn unknown(&self) -> bool {
        self.ret == u64::MAX
    }
}

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// With the smallest failing sub-history found (operations of this key).
    Violation {
        minimal: Vec<Operation>,
    },
    /// The search exceeded its budget of explored states.
    Unknown {
        explored: u64,
    },
}

/// The result of checking a whole history.
#[derive(Clone, Debug)]
pub struct Report {
    pub keys: BTreeMap<String, Verdict>,
    pub operations: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.keys
            .values()
            .all(|v| matches!(v, Verdict::Linearizable))
    }
    pub fn violations(&self) -> impl Iterator<Item = (&String, &Vec<Operation>)> {
        self.keys.iter().filter_map(|(k, v)| match v {
            Verdict::Violation { minimal } => Some((k, minimal)),
            _ => None,
        })
    }
}

/// States explored per key before giving up.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks `history` key by key.
pub fn check(history: &[Operation]) -> Report {
    check_with_budget(history, DEFAULT_BUDGET)
}

pub fn check_with_budget(history: &[Operation], budget: u64) -> Report {
    let mut by_key: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    let keys = by_key
        .into_iter()
        .map(|(k, ops)| {
            let v = match check_register(&ops, budget) {
                Some(true) => Verdict::Linearizable,
                Some(false) => Verdict::Violation {
                    minimal: minimize(&ops, budget),
                },
                None => Verdict::Unknown { explored: budget },
            };
            (k, v)
        })
        .collect();
    Report {
        keys,
        operations: history.len(),
    }
}

/// Greedy delta debugging: drop every operation whose removal keeps the
/// history non-linearizable. What remains is 1-minimal: removing any single
/// operation makes it linearizable.
fn minimize(ops: &[Operation], budget: u64) -> Vec<Operation> {
    let mut cur: Vec<Operation> = ops.to_vec();
    // Big histories: first try halving from the end (cheap, usually works for
    // a violation early in the run).
    while cur.len() > 64 {
        let half: Vec<Operation> = cur[..cur.len() / 2].to_vec();
        if check_register(&half, budget) == Some(false) {
            cur = half;
        } else {
            break;
        }
    }
    let mut i = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while i < cur.len() && std::time::Instant::now() < deadline {
        let mut trial = cur.clone();
        trial.remove(i);
        if check_register(&trial, budget) == Some(false) {
            cur = trial;
        } else {
            i += 1;
        }
    }
    cur
}

/// Register state: the current value as an index into the value table
/// (0 = absent).
type State = u32;

struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For calls: the index of the matching return event.
    matched: usize,
}

/// `Some(true)`: linearizable; `Some(false)`: not; `None`: budget exceeded.
pub fn check_register(ops: &[Operation], budget: u64) -> Option<bool> {
    if ops.is_empty() {
        return Some(true);
    }
    // Intern values: 0 = absent.
    let mut values: BTreeMap<String, u32> = BTreeMap::new();
    let mut intern = |s: &str| -> u32 {
        let n = values.len() as u32 + 1;
        *values.entry(s.to_string()).or_insert(n)
    };
    #[derive(Clone, Copy)]
    enum Step {
        Put(u32),
        Get(u32),
        Cas(u32, u32, Option<bool>),
        Delete,
    }
    let steps: Vec<Step> = ops
        .iter()
        .map(|o| match &o.op {
            Op::Put { value } => Step::Put(intern(value)),
            Op::Get { observed } => Step::Get(observed.as_deref().map(&mut intern).unwrap_or(0)),
            Op::Cas {
                expected,
                new,
                succeeded,
            } => Step::Cas(
                expected.as_deref().map(&mut intern).unwrap_or(0),
                intern(new),
                *succeeded,
            ),
            Op::Delete => Step::Delete,
        })
        .collect();
    // The model: Some(new state) if `step` with its observed output is legal
    // in `s`.
    let apply = |s: State, step: Step| -> Option<State> {
        match step {
            Step::Put(v) => Some(v),
            Step::Get(v) => (v == s).then_some(s),
            Step::Cas(exp, new, out) => {
                let holds = exp == s;
                match out {
                    Some(true) => holds.then_some(new),
                    Some(false) => (!holds).then_some(s),
                    None => Some(if holds { new } else { s }),
                }
            }
            Step::Delete => Some(0),
        }
    };

    // Events sorted by time; at equal times calls first (the permissive
    // reading: touching intervals overlap).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        order.push((o.call, true, i));
        order.push((o.ret, false, i));
    }
    order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    // Node 0 is the list head sentinel; events are 1..=2n.
    let n_ev = order.len();
    let mut ev: Vec<Event> = Vec::with_capacity(n_ev + 1);
    ev.push(Event {
        op: usize::MAX,
        is_call: false,
        prev: 0,
        next: 1,
        matched: 0,
    });
    let mut ret_pos = vec![0usize; ops.len()];
    for (pos, &(_, is_call, op)) in order.iter().enumerate() {
        let idx = pos + 1;
        if !is_call {
            ret_pos[op] = idx;
        }
        ev.push(Event {
            op,
            is_call,
            prev: idx - 1,
            next: if idx == n_ev { usize::MAX } else { idx + 1 },
            matched: 0,
        });
    }
    for e in ev.iter_mut().skip(1) {
        if e.is_call {
            e.matched = ret_pos[e.op];
        }
    }

    fn lift(ev: &mut [Event], i: usize) {
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = n;
        if n != usize::MAX {
            ev[n].prev = p;
        }
        let m = ev[i].matched;
        let (p, n) = (ev[m].prev, ev[m].next);
        ev[p].next = n;
        if n != usize::MAX {
            ev[n].prev = p;
        }
    }
    fn unlift(ev: &mut [Event], i: usize) {
        let m = ev[i].matched;
        let (p, n) = (ev[m].prev, ev[m].next);
        ev[p].next = m;
        if n != usize::MAX {
            ev[n].prev = m;
        }
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = i;
        if n != usize::MAX {
            ev[n].prev = i;
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = 0;
    let mut entry = ev[0].next;
    let mut explored = 0u64;
    while ev[0].next != usize::MAX {
        explored += 1;
        if explored > budget {
            return None;
        }
        if entry == usize::MAX {
            // Walked off the end without linearizing every call: only calls
            // with unknown returns (at +∞) remain, so backtrack like a return.
            let Some((e, s)) = calls.pop() else {
                return Some(false);
            };
            state = s;
            linearized[ev[e].op / 64] &= !(1 << (ev[e].op % 64));
            unlift(&mut ev, e);
            entry = ev[e].next;
            continue;
        }
        if ev[entry].is_call {
            let op = ev[entry].op;
            if let Some(next) = apply(state, steps[op]) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), next)) {
                    calls.push((entry, state));
                    state = next;
                    linearized = lin;
                    lift(&mut ev, entry);
                    entry = ev[0].next;
                    continue;
                }
            }
            entry = ev[entry].next;
        } else {
            // A return whose call is still pending: something before it must
            // be undone.
            let Some((e, s)) = calls.pop() else {
                return Some(false);
            };
            state = s;
            linearized[ev[e].op / 64] &= !(1 << (ev[e].op % 64));
            unlift(&mut ev, e);
            entry = ev[e].next;
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: u64, ret: u64, op: Op) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            ret,
            op,
        }
    }
    fn put(c: u64, a: u64, b: u64, v: &str) -> Operation {
        op(c, a, b, Op::Put { value: v.into() })
    }
    fn get(c: u64, a: u64, b: u64, v: Option<&str>) -> Operation {
        op(
            c,
            a,
            b,
            Op::Get {
                observed: v.map(Into::into),
            },
        )
    }
    fn cas(c: u64, a: u64, b: u64, exp: Option<&str>, new: &str, ok: Option<bool>) -> Operation {
        op(
            c,
            a,
            b,
            Op::Cas {
                expected: exp.map(Into::into),
                new: new.into(),
                succeeded: ok,
            },
        )
    }
    fn verdict(h: &[Operation]) -> Option<bool> {
        check_register(h, DEFAULT_BUDGET)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            get(1, 0, 1, None),
            put(1, 2, 3, "a"),
            get(2, 4, 5, Some("a")),
            cas(1, 6, 7, Some("a"), "b", Some(true)),
            cas(2, 8, 9, Some("a"), "c", Some(false)),
            get(1, 10, 11, Some("b")),
        ];
        assert_eq!(verdict(&h), Some(true));
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let h = vec![
            put(1, 0, 1, "a"),
            put(1, 2, 10, "b"),
            get(2, 3, 4, Some("a")),
            get(3, 5, 6, Some("b")),
        ];
        assert_eq!(verdict(&h), Some(true));
        // ...but not go back in time once a read has seen the new value.
        let h = vec![
            put(1, 0, 1, "a"),
            put(1, 2, 10, "b"),
            get(2, 3, 4, Some("b")),
            get(3, 5, 6, Some("a")),
        ];
        assert_eq!(verdict(&h), Some(false));
    }

    #[test]
    fn stale_read_is_rejected() {
        // The write returned before the read started, yet the read saw the old
        // value: what a leader serving reads without a read index can do.
        let h = vec![
            put(1, 0, 1, "a"),
            put(1, 2, 3, "b"),
            get(2, 4, 5, Some("a")),
        ];
        assert_eq!(verdict(&h), Some(false));
    }

    #[test]
    fn lost_write_is_rejected() {
        // An acknowledged write that a later read does not see.
        let h = vec![put(1, 0, 1, "a"), get(2, 2, 3, None)];
        assert_eq!(verdict(&h), Some(false));
    }

    #[test]
    fn read_of_a_never_written_value_is_rejected() {
        let h = vec![put(1, 0, 1, "a"), get(2, 2, 3, Some("zzz"))];
        assert_eq!(verdict(&h), Some(false));
    }

    #[test]
    fn cas_anomalies_are_rejected() {
        // Two CAS from the same expected value both succeed: a double grant.
        let h = vec![
            put(1, 0, 1, "a"),
            cas(1, 2, 5, Some("a"), "b", Some(true)),
            cas(2, 3, 6, Some("a"), "c", Some(true)),
        ];
        assert_eq!(verdict(&h), Some(false));
        // A CAS that failed although its expected value was current.
        let h = vec![
            put(1, 0, 1, "a"),
            cas(2, 2, 3, Some("a"), "b", Some(false)),
            get(1, 4, 5, Some("a")),
        ];
        assert_eq!(verdict(&h), Some(false));
        // A CAS that succeeded although the value differed.
        let h = vec![put(1, 0, 1, "a"), cas(2, 2, 3, Some("x"), "b", Some(true))];
        assert_eq!(verdict(&h), Some(false));
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never() {
        // A timed-out write seen later by one read...
        let h = vec![
            put(1, 0, 1, "a"),
            put(2, 2, u64::MAX, "b"),
            get(3, 10, 11, Some("a")),
            get(3, 12, 13, Some("b")),
        ];
        assert_eq!(verdict(&h), Some(true));
        // ...or never.
        let h = vec![
            put(1, 0, 1, "a"),
            put(2, 2, u64::MAX, "b"),
            get(3, 10, 11, Some("a")),
        ];
        assert_eq!(verdict(&h), Some(true));
        // But it cannot take effect before it was invoked.
        let h = vec![
            put(1, 0, 1, "a"),
            get(3, 2, 3, Some("b")),
            put(2, 4, u64::MAX, "b"),
        ];
        assert_eq!(verdict(&h), Some(false));
        // Nor flip back and forth.
        let h = vec![
            put(1, 0, 1, "a"),
            put(2, 2, u64::MAX, "b"),
            get(3, 10, 11, Some("b")),
            get(3, 12, 13, Some("a")),
        ];
        assert_eq!(verdict(&h), Some(false));
    }

    #[test]
    fn violations_are_minimized_and_keys_checked_separately() {
        let mut h = Vec::new();
        for i in 0..40 {
            h.push(put(1, i * 10, i * 10 + 1, &format!("v{i}")));
            h.push(get(2, i * 10 + 2, i * 10 + 3, Some(&format!("v{i}"))));
        }
        // One stale read in the middle.
        h.push(get(3, 205, 206, Some("v3")));
        let mut other = put(9, 0, 1, "x");
        other.key = "other".into();
        h.push(other);
        let r = check(&h);
        assert!(!r.ok());
        assert_eq!(r.keys["other"], Verdict::Linearizable);
        let (_, minimal) = r.violations().next().expect("a violation");
        assert!(minimal.len() <= 3, "not minimal: {minimal:#?}");
        assert_eq!(check_register(minimal, DEFAULT_BUDGET), Some(false));
        assert!(minimal.contains(&get(3, 205, 206, Some("v3"))));
    }

    #[test]
    fn many_concurrent_clients_check_quickly() {
        // 8 clients, 4000 operations, heavy overlap, generated from a real
        // sequential execution so it must be linearizable.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut value: Option<String> = None;
        let mut h = Vec::new();
        let mut t = 100u64;
        for i in 0..4000u64 {
            // Each op's effect happens at `t`; its interval spans around it.
            t += 10;
            let call = t - rng.random_range(0..40);
            let ret = t + rng.random_range(0..40);
            let client = i % 8;
            let o = match rng.random_range(0..3) {
                0 => {
                    let v = format!("v{i}");
                    value = Some(v.clone());
                    Op::Put { value: v }
                }
                1 => Op::Get {
                    observed: value.clone(),
                },
                _ => {
                    let exp = if rng.random_bool(0.5) {
                        value.clone()
                    } else {
                        Some("nope".into())
                    };
                    let ok = exp == value;
                    let new = format!("c{i}");
                    if ok {
                        value = Some(new.clone());
                    }
                    Op::Cas {
                        expected: exp,
                        new,
                        succeeded: Some(ok),
                    }
                }
            };
            h.push(op(client, call, ret, o));
        }
        assert_eq!(verdict(&h), Some(true));
    }
}

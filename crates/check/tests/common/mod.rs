//! Shared by the property tests and the big-history check: histories
//! generated from a real execution, a whole-store model, and an
//! exhaustive checker to compare against.

#![allow(dead_code)]

use std::collections::BTreeMap;

use ftvm_check::{History, KvOp, Model, OpId, Operation, Outcome, RegisterOp, RegisterOutput};

pub type KvHistory = History<KvOp<u64>, RegisterOutput>;

/// splitmix64: the tests need reproducible randomness from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub clients: usize,
    pub ops: usize,
    pub keys: u64,
    /// Values are drawn from `0..values`; small ranges repeat values,
    /// which makes the search work harder.
    pub values: i64,
    /// Per mille of in-flight steps where the client gives up (timeout).
    pub unknown: u64,
    /// Per mille of operations that fail cleanly.
    pub fail: u64,
    /// Per mille of compare-and-swaps among the operations.
    pub cas: u64,
    /// Per million events, a failover: every client with a request in
    /// flight gives up on it at once.
    pub failover: u64,
    /// Per million writes, a bug: the write is acknowledged and lost.
    /// Zero for a correct store.
    pub lose: u64,
}

enum Client {
    Idle,
    Sent(OpId),
    Applied(OpId, RegisterOutput),
}

fn apply(store: &mut BTreeMap<u64, i64>, input: &KvOp<u64>) -> RegisterOutput {
    let value = store.get(&input.key).copied();
    match input.op {
        RegisterOp::Read => RegisterOutput::Read(value),
        RegisterOp::Write(v) => {
            store.insert(input.key, v);
            RegisterOutput::Written
        }
        RegisterOp::Cas(expected, new) => {
            let swap = value == Some(expected);
            if swap {
                store.insert(input.key, new);
            }
            RegisterOutput::Cas(swap)
        }
    }
}

/// Runs clients against a real (sequential) store, each operation
/// taking effect at one instant between its call and return, and
/// records what the clients saw: a linearizable history by construction.
/// Clients that give up leave their request in flight; it takes effect
/// later or never.
pub fn simulate(seed: u64, w: Workload) -> KvHistory {
    let mut rng = Rng::new(seed);
    let mut history = History::new();
    let mut store = BTreeMap::new();
    let mut clients: Vec<Client> = (0..w.clients).map(|_| Client::Idle).collect();
    let mut process: Vec<u64> = (0..w.clients as u64).collect();
    let mut next_process = w.clients as u64;
    let mut orphans: Vec<OpId> = Vec::new();
    let mut now = 0u64;
    let mut invoked = 0;
    loop {
        now += 1 + rng.below(3);
        if !orphans.is_empty() && rng.chance(50) {
            let op = orphans.swap_remove(rng.below(orphans.len() as u64) as usize);
            if rng.chance(500) {
                apply(&mut store, &history.ops()[op.0].input);
            }
            continue;
        }
        if rng.below(1_000_000) < w.failover {
            for c in 0..w.clients {
                if let Client::Sent(op) | Client::Applied(op, _) = clients[c] {
                    history
                        .complete(op, Outcome::Unknown, now)
                        .expect("pending");
                    if matches!(clients[c], Client::Sent(_)) {
                        orphans.push(op);
                    }
                    process[c] = next_process;
                    next_process += 1;
                    clients[c] = Client::Idle;
                }
            }
            continue;
        }
        let c = rng.below(w.clients as u64) as usize;
        match clients[c] {
            Client::Idle if invoked < w.ops => {
                invoked += 1;
                let key = rng.below(w.keys);
                let v = rng.below(w.values as u64) as i64;
                let input = if rng.chance(w.cas) {
                    KvOp::cas(key, v, rng.below(w.values as u64) as i64)
                } else if rng.chance(500) {
                    KvOp::write(key, v)
                } else {
                    KvOp::read(key)
                };
                clients[c] = Client::Sent(history.invoke(process[c], input, now));
            }
            Client::Idle => {
                if clients.iter().all(|c| matches!(c, Client::Idle)) {
                    return history;
                }
            }
            Client::Sent(op) => {
                if rng.chance(w.fail) {
                    history.complete(op, Outcome::Fail, now).expect("pending");
                    clients[c] = Client::Idle;
                } else if rng.chance(w.unknown) {
                    history
                        .complete(op, Outcome::Unknown, now)
                        .expect("pending");
                    orphans.push(op);
                    process[c] = next_process;
                    next_process += 1;
                    clients[c] = Client::Idle;
                } else if matches!(history.ops()[op.0].input.op, RegisterOp::Write(_))
                    && rng.below(1_000_000) < w.lose
                {
                    clients[c] = Client::Applied(op, RegisterOutput::Written);
                } else {
                    let out = apply(&mut store, &history.ops()[op.0].input);
                    clients[c] = Client::Applied(op, out);
                }
            }
            Client::Applied(op, out) => {
                let outcome = if rng.chance(w.unknown) {
                    Outcome::Unknown
                } else {
                    Outcome::Ok(out)
                };
                history.complete(op, outcome, now).expect("pending");
                clients[c] = Client::Idle;
            }
        }
    }
}

/// A value no workload writes.
pub const NEVER_WRITTEN: i64 = 1_000_000_007;

/// Replaces the output of the completed read chosen by `pick` with a
/// value never written; `None` if there is no completed read.
pub fn corrupt_a_read(history: &mut KvHistory, pick: u64) -> Option<OpId> {
    let reads: Vec<usize> = history
        .ops()
        .iter()
        .enumerate()
        .filter(|(_, op)| op.input.op == RegisterOp::Read && matches!(op.outcome, Outcome::Ok(_)))
        .map(|(i, _)| i)
        .collect();
    if reads.is_empty() {
        return None;
    }
    let i = reads[(pick % reads.len() as u64) as usize];
    history.ops_mut()[i].outcome = Outcome::Ok(RegisterOutput::Read(Some(NEVER_WRITTEN)));
    Some(OpId(i))
}

/// The whole store as one object, with no partitioning: the check that
/// compositionality says must agree with the per-key one.
pub struct WholeStore;

impl Model for WholeStore {
    type Input = KvOp<u64>;
    type Output = RegisterOutput;
    type State = BTreeMap<u64, Option<i64>>;
    type Key = ();

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn key(&self, _: &KvOp<u64>) {}

    fn step(
        &self,
        state: &Self::State,
        input: &KvOp<u64>,
        output: Option<&RegisterOutput>,
    ) -> Option<Self::State> {
        // Written independently of `Register::step`, so that the two
        // models check each other.
        let current = state.get(&input.key).copied().flatten();
        let mut state = state.clone();
        let set = |state: &mut Self::State, v: i64| {
            state.insert(input.key, Some(v));
        };
        match (input.op, output) {
            (RegisterOp::Read, None) => {}
            (RegisterOp::Read, Some(RegisterOutput::Read(seen))) if *seen == current => {}
            (RegisterOp::Write(v), None | Some(RegisterOutput::Written)) => set(&mut state, v),
            (RegisterOp::Cas(e, n), None) if current == Some(e) => set(&mut state, n),
            (RegisterOp::Cas(e, _), None) if current != Some(e) => {}
            (RegisterOp::Cas(e, n), Some(RegisterOutput::Cas(true))) if current == Some(e) => {
                set(&mut state, n)
            }
            (RegisterOp::Cas(e, _), Some(RegisterOutput::Cas(false))) if current != Some(e) => {}
            _ => return None,
        }
        Some(state)
    }
}

/// Linearizability by trying every order (tiny histories only): an
/// operation may go next unless a completed operation not yet placed
/// returned strictly before its call; unknown operations may be left out.
pub fn brute_force<M: Model>(model: &M, history: &History<M::Input, M::Output>) -> bool {
    let ops: Vec<&Operation<M::Input, M::Output>> = history
        .ops()
        .iter()
        .filter(|op| !matches!(op.outcome, Outcome::Fail))
        .collect();
    fn go<M: Model>(
        model: &M,
        ops: &[&Operation<M::Input, M::Output>],
        placed: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        let pending_known: Vec<usize> = (0..ops.len())
            .filter(|&i| !placed[i] && ops[i].effective_ret().is_some())
            .collect();
        if pending_known.is_empty() {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            let blocked = pending_known
                .iter()
                .any(|&j| j != i && ops[j].effective_ret().is_some_and(|ret| ret < ops[i].call));
            if blocked {
                continue;
            }
            if let Some(next) = model.step(state, &ops[i].input, ops[i].output()) {
                placed[i] = true;
                let found = go(model, ops, placed, &next);
                placed[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    go(model, &ops, &mut vec![false; ops.len()], &model.init())
}

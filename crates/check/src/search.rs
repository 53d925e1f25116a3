//! The search over one partition. The algorithm is described in
//! `linearizability.rs`; this is how it is made fast enough for
//! histories with failovers in them, and why each cut keeps verdicts
//! exact.
//!
//! Each configuration's candidates are tried in three passes. First,
//! a *greedy* pass: a completed read-only candidate
//! ([`Model::is_read_only`]) that is legal in the current state is the
//! only move tried, because it can be moved to this point of any
//! linearization from here (it changes no state, and everything that
//! must precede it already has been placed). Concurrent reads would
//! otherwise be tried in every order. Then the other completed
//! candidates, in list order, as in Porcupine. Then the unknown ones.
//!
//! Completed operations live in the doubly-linked list of call and
//! return entries. Unknown operations have no return entry (their return
//! is +infinity), so they are kept out of the list, in call order, and
//! are tried after the completed candidates. Two reasons:
//! every unknown operation is a candidate from its call to the end of
//! the history, so walking past them in the list would cost at every
//! step; and trying them last lets the memo prune by subsumption, below.
//!
//! The memo (Lowe's cache) holds configurations: the set of linearized
//! completed operations, the set of linearized unknown operations, and
//! the state. A configuration is skipped if one with the same completed
//! set and state and a *subset* of its unknown operations was reached
//! before: unknown operations are optional, so whatever completes the
//! larger configuration completes the smaller one too, one operation
//! sooner (the memo's usual argument, by induction on the length of the
//! completion, goes through unchanged). Without this, k unknown
//! operations pending together can multiply the configurations by 2^k.
//!
//! Unknown operations with equal inputs are interchangeable (their
//! outputs are unknown alike), except that the one called earlier may be
//! placed wherever the later one can. So of such twins only the earliest
//! not yet linearized is a candidate: every linearization can be
//! rearranged into one that places twins in call order, and the memo
//! then sees "two of these three writes of 1" once instead of three
//! times. Workloads with few distinct values make many twins.

use std::collections::HashMap;

use crate::history::{History, OpId};
use crate::linearizability::{CheckOptions, Explanation, GiveUp, explain};
use crate::model::Model;

const NIL: u32 = u32::MAX;

pub(crate) enum Verdict {
    Ok,
    Illegal(Explanation),
    GaveUp(GiveUp, u64),
}

/// An entry of the list: a call or a return of a completed operation.
#[derive(Clone, Copy)]
struct Node {
    prev: u32,
    next: u32,
    /// Index into `Search::ops`.
    op: u32,
    is_call: bool,
}

/// An operation of the partition.
struct Op {
    /// Index into the history.
    id: usize,
    /// For a completed operation its call node, for an unknown one `NIL`.
    call_node: u32,
    ret_node: u32,
    /// The return time, for a completed operation; the call time for an
    /// unknown one.
    time: u64,
    /// Completed: rank by return. Unknown: rank by call.
    rank: u32,
    /// Unknown: the rank of the unknown operation with the same input
    /// called last before this one, or `NIL`.
    twin: u32,
}

impl Op {
    fn unknown(&self) -> bool {
        self.call_node == NIL
    }
}

/// The set of linearized completed operations, kept compact because the
/// memo stores one per configuration. Every operation that returned
/// before the first return entry left in the list is linearized, so
/// with operations ranked by return the set is "every rank below
/// `floor`" plus the few concurrent ranks above it.
#[derive(Default)]
struct Known {
    floor: u32,
    above: Vec<u32>,
}

impl Known {
    fn insert(&mut self, rank: u32) {
        if rank == self.floor {
            self.floor += 1;
            let run = self
                .above
                .iter()
                .zip(self.floor..)
                .take_while(|(a, f)| *a == f)
                .count();
            self.above.drain(..run);
            self.floor += run as u32;
        } else if let Err(at) = self.above.binary_search(&rank) {
            self.above.insert(at, rank);
        }
    }

    /// Undoes the latest `insert(rank)`: the search undoes in LIFO order,
    /// so `rank` is either above the floor or the floor ran up from it.
    fn remove(&mut self, rank: u32) {
        if let Ok(at) = self.above.binary_search(&rank) {
            self.above.remove(at);
        } else if rank < self.floor {
            self.above.splice(0..0, rank + 1..self.floor);
            self.floor = rank;
        }
    }
}

fn is_set(bits: &[u64], i: u32) -> bool {
    bits[i as usize / 64] & (1 << (i % 64)) != 0
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

/// The states reached with one set of completed operations, each with
/// the minimal sets of unknown operations it was reached with.
type Reached<S> = Vec<(S, Vec<Box<[u64]>>)>;

/// Lowe's memo, with subsumption on unknown operations.
struct Memo<S> {
    map: HashMap<Box<[u32]>, Reached<S>>,
    bytes: usize,
    scratch: Vec<u32>,
}

impl<S: Clone + Eq> Memo<S> {
    /// Records the configuration; false if it (or one it subsumes) was
    /// reached before.
    fn visit(&mut self, known: &Known, unknown: &[u64], state: &S) -> bool {
        self.scratch.clear();
        self.scratch.push(known.floor);
        self.scratch.extend_from_slice(&known.above);
        let set_bytes = size_of_val(unknown) + 2 * size_of::<usize>();
        match self.map.get_mut(&self.scratch[..]) {
            Some(states) => match states.iter_mut().find(|(s, _)| s == state) {
                Some((_, sets)) => {
                    if sets.iter().any(|seen| is_subset(seen, unknown)) {
                        return false;
                    }
                    sets.retain(|seen| !is_subset(unknown, seen));
                    sets.push(unknown.into());
                    self.bytes += set_bytes;
                }
                None => {
                    states.push((state.clone(), vec![unknown.into()]));
                    self.bytes += size_of::<(S, Vec<Box<[u64]>>)>() + set_bytes;
                }
            },
            None => {
                let key: Box<[u32]> = self.scratch.as_slice().into();
                self.bytes +=
                    size_of_val(&*key) + 64 + size_of::<(S, Vec<Box<[u64]>>)>() + set_bytes;
                self.map
                    .insert(key, vec![(state.clone(), vec![unknown.into()])]);
            }
        }
        true
    }
}

/// Where the walk is, in the three passes over the candidates of a
/// configuration.
#[derive(Clone, Copy)]
enum Cursor {
    /// Looking, from this node, for a legal completed candidate that is
    /// read-only ([`Model::is_read_only`]): if there is one, it is the
    /// only move worth trying.
    Greedy(u32),
    /// Trying completed candidates, from this node.
    Known(u32),
    /// Trying unknown candidates called by `limit` (the return time of the
    /// first return entry left), from this index of `Search::unknown`.
    Unknown { next: usize, limit: u64 },
    /// Nothing left to try here: undo the last choice.
    Backtrack,
}

pub(crate) struct Search<'a, M: Model> {
    model: &'a M,
    history: &'a History<M::Input, M::Output>,
    options: &'a CheckOptions<'a>,
    ops: Vec<Op>,
    nodes: Vec<Node>,
    /// Unknown operations in call order (indices into `ops`).
    unknown: Vec<u32>,
    known: usize,
}

/// The longest prefix found and where it got stuck.
struct Best<S> {
    prefix: Vec<u32>,
    state: S,
    stuck: u32,
    candidates: Vec<u32>,
}

impl<'a, M: Model> Search<'a, M> {
    pub(crate) fn new(
        model: &'a M,
        history: &'a History<M::Input, M::Output>,
        ids: &[usize],
        options: &'a CheckOptions<'a>,
    ) -> Self {
        // (time, is_return, op): calls sort before returns at the same
        // time, so intervals are closed and touching operations are
        // concurrent, as a monotonic clock that can repeat a value needs.
        let mut events = Vec::with_capacity(2 * ids.len());
        let mut ops = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let op = &history.ops()[id];
            let ret = op.effective_ret();
            if let Some(ret) = ret {
                events.push((op.call, false, i));
                events.push((ret, true, i));
            } else {
                unknown.push((op.call, i as u32));
            }
            ops.push(Op {
                id,
                call_node: NIL,
                ret_node: NIL,
                time: ret.unwrap_or(op.call),
                rank: 0,
                twin: NIL,
            });
        }
        events.sort_unstable();
        unknown.sort_unstable();
        // Node 0 is the head sentinel.
        let mut nodes = vec![Node {
            prev: NIL,
            next: if events.is_empty() { NIL } else { 1 },
            op: NIL,
            is_call: false,
        }];
        let mut known = 0;
        for (n, &(_, is_return, i)) in events.iter().enumerate() {
            let node = n as u32 + 1;
            nodes.push(Node {
                prev: node - 1,
                next: if n + 1 == events.len() { NIL } else { node + 1 },
                op: i as u32,
                is_call: !is_return,
            });
            if is_return {
                ops[i].ret_node = node;
                ops[i].rank = known;
                known += 1;
            } else {
                ops[i].call_node = node;
            }
        }
        let mut last = HashMap::new();
        for (rank, &(_, i)) in unknown.iter().enumerate() {
            let op = &mut ops[i as usize];
            op.rank = rank as u32;
            let input = &history.ops()[op.id].input;
            op.twin = last.insert(input, rank as u32).unwrap_or(NIL);
        }
        Self {
            model,
            history,
            options,
            ops,
            nodes,
            unknown: unknown.into_iter().map(|(_, i)| i).collect(),
            known: known as usize,
        }
    }

    fn unlink(&mut self, node: u32) {
        let Node { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = next;
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn relink(&mut self, node: u32) {
        let Node { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = node;
        if next != NIL {
            self.nodes[next as usize].prev = node;
        }
    }

    /// Takes `op` out of the list (its return first, as `unlift` puts
    /// them back in the opposite order).
    fn lift(&mut self, op: usize, known: &mut Known, unknown: &mut [u64]) {
        let Op {
            call_node,
            ret_node,
            rank,
            ..
        } = self.ops[op];
        if call_node == NIL {
            unknown[rank as usize / 64] |= 1 << (rank % 64);
        } else {
            self.unlink(call_node);
            self.unlink(ret_node);
            known.insert(rank);
        }
    }

    fn unlift(&mut self, op: usize, known: &mut Known, unknown: &mut [u64]) {
        let Op {
            call_node,
            ret_node,
            rank,
            ..
        } = self.ops[op];
        if call_node == NIL {
            unknown[rank as usize / 64] &= !(1 << (rank % 64));
        } else {
            self.relink(ret_node);
            self.relink(call_node);
            known.remove(rank);
        }
    }

    pub(crate) fn run(mut self) -> Verdict {
        let mut known = Known::default();
        let mut unknown = vec![0u64; self.unknown.len().div_ceil(64)];
        let mut memo = Memo {
            map: HashMap::new(),
            bytes: 0,
            scratch: Vec::new(),
        };
        // The linearization so far: operation, state before it, and where
        // to go on when it is undone.
        let mut calls: Vec<(u32, M::State, Cursor)> = Vec::new();
        let mut best: Option<Best<M::State>> = None;
        let mut state = self.model.init();
        let mut steps = 0u64;
        let mut left = self.known;
        let mut cursor = Cursor::Greedy(self.nodes[0].next);
        loop {
            if left == 0 {
                return Verdict::Ok;
            }
            // While a completed operation is left its return entry is in
            // the list, so the walks meet it before running off the end.
            let (op, resume) = match cursor {
                Cursor::Greedy(node) | Cursor::Known(node) => {
                    let n = self.nodes[node as usize];
                    match (n.is_call, cursor) {
                        (true, Cursor::Greedy(_)) => (n.op, Cursor::Greedy(n.next)),
                        (true, _) => (n.op, Cursor::Known(n.next)),
                        (false, Cursor::Greedy(_)) => {
                            cursor = Cursor::Known(self.nodes[0].next);
                            continue;
                        }
                        (false, _) => {
                            let limit = self.ops[n.op as usize].time;
                            cursor = Cursor::Unknown { next: 0, limit };
                            continue;
                        }
                    }
                }
                Cursor::Unknown { next, limit } => {
                    let candidate = self.unknown.get(next).copied();
                    let Some(op) = candidate.filter(|&op| self.ops[op as usize].time <= limit)
                    else {
                        cursor = Cursor::Backtrack;
                        continue;
                    };
                    let resume = Cursor::Unknown {
                        next: next + 1,
                        limit,
                    };
                    let Op { rank, twin, .. } = self.ops[op as usize];
                    if is_set(&unknown, rank) || (twin != NIL && !is_set(&unknown, twin)) {
                        cursor = resume;
                        continue;
                    }
                    (op, resume)
                }
                Cursor::Backtrack => {
                    if best.as_ref().is_none_or(|b| calls.len() > b.prefix.len()) {
                        best = Some(self.best(&calls, &state, &unknown));
                    }
                    let Some((top, previous, resume)) = calls.pop() else {
                        return Verdict::Illegal(self.explain(best));
                    };
                    state = previous;
                    self.unlift(top as usize, &mut known, &mut unknown);
                    left += usize::from(!self.ops[top as usize].unknown());
                    cursor = resume;
                    continue;
                }
            };
            steps += 1;
            if let Some(reason) = self.over_budget(steps, memo.bytes) {
                return Verdict::GaveUp(reason, steps);
            }
            let i = op as usize;
            let hist = &self.history.ops()[self.ops[i].id];
            let is_unknown = self.ops[i].unknown();
            let greedy = matches!(cursor, Cursor::Greedy(_));
            if greedy
                && !hist
                    .output()
                    .is_some_and(|output| self.model.is_read_only(&hist.input, output))
            {
                cursor = resume;
                continue;
            }
            let new_state = self.model.step(&state, &hist.input, hist.output());
            // An unknown operation that changes nothing is not worth
            // placing: leaving it out keeps strictly more options.
            let new_state = new_state.filter(|s| !is_unknown || *s != state);
            match new_state {
                Some(new_state) if greedy && new_state != state => cursor = resume,
                Some(new_state) => {
                    // A legal read-only candidate can be moved to this
                    // point of any linearization from here (it changes no
                    // state, wherever it was, and everything that must
                    // precede it already does), so when the greedy pass
                    // finds one, the configuration stands or falls with it.
                    let undo = if greedy { Cursor::Backtrack } else { resume };
                    self.lift(i, &mut known, &mut unknown);
                    if memo.visit(&known, &unknown, &new_state) {
                        calls.push((op, std::mem::replace(&mut state, new_state), undo));
                        left -= usize::from(!is_unknown);
                        cursor = Cursor::Greedy(self.nodes[0].next);
                    } else {
                        self.unlift(i, &mut known, &mut unknown);
                        cursor = undo;
                    }
                }
                None => cursor = resume,
            }
        }
    }

    /// What the explanation shows of a configuration where the search is
    /// stuck: the first return entry left and the candidates before it.
    fn best(
        &self,
        calls: &[(u32, M::State, Cursor)],
        state: &M::State,
        linearized: &[u64],
    ) -> Best<M::State> {
        let mut candidates = Vec::new();
        let mut at = self.nodes[0].next;
        while at != NIL && self.nodes[at as usize].is_call {
            candidates.push(self.nodes[at as usize].op);
            at = self.nodes[at as usize].next;
        }
        let stuck = if at == NIL {
            NIL
        } else {
            self.nodes[at as usize].op
        };
        let limit = if at == NIL {
            u64::MAX
        } else {
            self.ops[stuck as usize].time
        };
        for &op in &self.unknown {
            let Op { time, rank, .. } = self.ops[op as usize];
            if time > limit {
                break;
            }
            if !is_set(linearized, rank) {
                candidates.push(op);
            }
        }
        Best {
            prefix: calls.iter().map(|c| c.0).collect(),
            state: state.clone(),
            stuck,
            candidates,
        }
    }

    fn over_budget(&self, steps: u64, memo_bytes: usize) -> Option<GiveUp> {
        if steps > self.options.max_steps {
            Some(GiveUp::Steps)
        } else if memo_bytes > self.options.max_cache_bytes {
            Some(GiveUp::Memory)
        } else if steps.is_multiple_of(4096) && self.options.interrupt.is_some_and(|stop| stop()) {
            Some(GiveUp::Interrupted)
        } else {
            None
        }
    }

    fn explain(&self, best: Option<Best<M::State>>) -> Explanation {
        let id = |op: u32| OpId(self.ops[op as usize].id);
        match best {
            Some(best) => explain(
                self.history,
                best.prefix.iter().map(|&op| id(op)).collect(),
                format!("{:?}", best.state),
                if best.stuck == NIL {
                    OpId(0)
                } else {
                    id(best.stuck)
                },
                best.candidates.iter().map(|&op| id(op)).collect(),
                self.ops.len(),
            ),
            // Unreachable: the search only fails when stuck, which records
            // a `Best` first. Say so rather than panic.
            None => explain(
                self.history,
                Vec::new(),
                String::new(),
                OpId(0),
                Vec::new(),
                0,
            ),
        }
    }
}

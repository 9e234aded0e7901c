//! The collective of ranks that are threads of one process: [`group`] makes the
//! handles, one per thread, around one shared rendezvous.
//!
//! Each operation is a numbered round: every rank leaves a copy of its buffer in
//! the round's slot, waits until all slots are filled, then computes the result
//! itself from the copies, adding them in rank order (so every rank gets the same
//! bits, run after run). The last rank to take its copies frees the round.
//!
//! A rank whose handle is dropped (it returned, failed or panicked) or that calls
//! [`Collective::abort`] is marked gone; the others, waiting for it, return
//! [`Error::Collective`](crate::Error::Collective) naming it (and its reason) at
//! once. A rank that neither arrives nor leaves is reported when the timeout runs out.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{error, sum_in_order, Collective};
use crate::error::Result;

/// What a rank contributed to a round.
enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Payload {
    fn describe(&self) -> String {
        match self {
            Payload::F32(v) => format!("{} f32 values", v.len()),
            Payload::F64(v) => format!("{} f64 values", v.len()),
        }
    }
    fn same_shape(&self, other: &Payload) -> bool {
        match (self, other) {
            (Payload::F32(a), Payload::F32(b)) => a.len() == b.len(),
            (Payload::F64(a), Payload::F64(b)) => a.len() == b.len(),
            _ => false,
        }
    }
}

/// One operation in progress: the contributions so far, by rank.
struct Round {
    slots: Vec<Option<Arc<Payload>>>,
    /// Ranks that have taken the full set.
    taken: usize,
}

struct State {
    rounds: BTreeMap<u64, Round>,
    /// `Some(reason)` for each rank that has stopped taking part.
    gone: Vec<Option<String>>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    arrived: Condvar,
}

impl Shared {
    /// The state, also after a rank panicked while holding it (the state is
    /// updated in single statements, so it is consistent).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One thread's handle on a [`group`].
pub struct LocalCollective {
    shared: Arc<Shared>,
    rank: usize,
    /// The number of the next round this rank takes part in.
    round: u64,
}

/// Handles for `world` ranks (index = rank) that wait at most `timeout` for each
/// other at every operation.
pub fn group(world: usize, timeout: Duration) -> Vec<LocalCollective> {
    let shared = Arc::new(Shared {
        world,
        timeout,
        state: Mutex::new(State { rounds: BTreeMap::new(), gone: vec![None; world] }),
        arrived: Condvar::new(),
    });
    (0..world).map(|rank| LocalCollective { shared: shared.clone(), rank, round: 0 }).collect()
}

impl LocalCollective {
    /// Leaves `mine` in this round and returns every rank's contribution, in rank
    /// order, once all are there.
    fn exchange(&mut self, mine: Payload, op: &str) -> Result<Vec<Arc<Payload>>> {
        let (sh, rank, id) = (&*self.shared, self.rank, self.round);
        self.round += 1;
        let deadline = Instant::now() + sh.timeout;
        let mut st = sh.lock();
        let world = sh.world;
        let round = st.rounds.entry(id).or_insert_with(|| Round { slots: vec![None; world], taken: 0 });
        if let Some(other) = round.slots.iter().flatten().next() {
            if !other.same_shape(&mine) {
                let msg = format!("{op}: this rank gives {}, another {}", mine.describe(), other.describe());
                return Err(error(rank, msg));
            }
        }
        round.slots[rank] = Some(Arc::new(mine));
        sh.arrived.notify_all();
        loop {
            let round = st.rounds.get_mut(&id).expect("a round is freed only after every rank took it");
            let missing: Vec<usize> = (0..world).filter(|&r| round.slots[r].is_none()).collect();
            if missing.is_empty() {
                let all: Vec<Arc<Payload>> = round.slots.iter().flatten().cloned().collect();
                round.taken += 1;
                if round.taken == world {
                    st.rounds.remove(&id);
                }
                return Ok(all);
            }
            if let Some(&dead) = missing.iter().find(|&&r| st.gone[r].is_some()) {
                let why = st.gone[dead].clone().unwrap_or_default();
                return Err(error(rank, format!("{op}: rank {dead} of {world} stopped ({why}); stopping too")));
            }
            let now = Instant::now();
            if now >= deadline {
                let list = missing.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                return Err(error(
                    rank,
                    format!(
                        "{op}: rank(s) {list} of {world} did not arrive within {:.0} s (--replica-timeout); \
                         stopping",
                        sh.timeout.as_secs_f64()
                    ),
                ));
            }
            st = sh.arrived.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Marks this rank gone with `reason` (the first reason given stays).
    fn leave(&self, reason: &str) {
        let mut st = self.shared.lock();
        st.gone[self.rank].get_or_insert_with(|| reason.to_string());
        self.shared.arrived.notify_all();
    }
}

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let all = self.exchange(Payload::F64(buf.to_vec()), "all-reduce")?;
        let bufs: Vec<&[f64]> =
            all.iter().filter_map(|p| if let Payload::F64(v) = &**p { Some(&v[..]) } else { None }).collect();
        sum_in_order(buf, &bufs);
        Ok(())
    }

    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(Payload::F32(buf.to_vec()), "all-reduce")?;
        let bufs: Vec<&[f32]> =
            all.iter().filter_map(|p| if let Payload::F32(v) = &**p { Some(&v[..]) } else { None }).collect();
        sum_in_order(buf, &bufs);
        Ok(())
    }

    fn broadcast_f64(&mut self, buf: &mut [f64], root: usize) -> Result<()> {
        if root >= self.world() {
            return Err(error(self.rank, format!("broadcast from rank {root} of {}", self.world())));
        }
        let all = self.exchange(Payload::F64(buf.to_vec()), "broadcast")?;
        if let Payload::F64(v) = &*all[root] {
            buf.copy_from_slice(v);
        }
        Ok(())
    }

    fn abort(&mut self, reason: &str) {
        self.leave(reason);
    }
}

impl Drop for LocalCollective {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() { "it panicked" } else { "it stopped" };
        self.leave(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_rank_order_and_reports_a_lost_rank() {
        let handles = group(3, Duration::from_secs(5));
        let out: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
            let joins: Vec<_> = handles
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        let mut v = vec![c.rank() as f32 + 0.5, 1e8, -1e8];
                        c.all_reduce_f32(&mut v)?;
                        if c.rank() == 2 {
                            c.abort("test");
                            return Ok(v);
                        }
                        c.barrier()?;
                        Ok(v)
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        assert_eq!(out[2].as_ref().unwrap(), &vec![4.5f32, 3e8, -3e8]);
        for r in [0, 1] {
            let e = out[r].as_ref().unwrap_err().to_string();
            assert!(e.contains("rank 2 of 3 stopped (test)"), "{e}");
        }
    }

    #[test]
    fn a_rank_that_never_arrives_times_out() {
        let mut handles = group(2, Duration::from_millis(200));
        let late = handles.pop().unwrap();
        let t = Instant::now();
        let e = handles[0].barrier().unwrap_err().to_string();
        assert!(e.contains("rank(s) 1 of 2 did not arrive"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(late);
    }
}

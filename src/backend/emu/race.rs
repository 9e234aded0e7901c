//! Race detection by schedule comparison: a correct kernel computes the same bytes
//! whatever order its threads run in between barriers; a missing `__syncthreads` or
//! `__syncwarp` makes a thread read a slot before or after its writer ran, which
//! shows as a difference between the forward, reverse and random schedules.
//!
//! Float atomics are the one legitimate source of differences (summation order):
//! compare those outputs with a tolerance ([`RaceReport::check`]).

use super::{backend_with, EmuBackend, Schedule};
use crate::error::{Error, Result};

/// The schedules [`race_check`] runs: forward, reverse, and two seeded random orders.
pub const SCHEDULES: [Schedule; 4] =
    [Schedule::Forward, Schedule::Reverse, Schedule::Random(0x5eed_0001), Schedule::Random(0x5eed_0002)];

/// The outputs of one computation under each schedule.
#[derive(Debug, Clone)]
pub struct RaceReport {
    /// (schedule, output) in the order of [`SCHEDULES`].
    pub runs: Vec<(Schedule, Vec<f32>)>,
}

/// Runs `f` on a fresh emulator backend under each of [`SCHEDULES`] and collects the
/// outputs. `f` sets up its buffers, launches, and returns what it downloaded.
pub fn race_check<F>(mut f: F) -> Result<RaceReport>
where
    F: FnMut(&EmuBackend) -> Result<Vec<f32>>,
{
    let mut runs = Vec::with_capacity(SCHEDULES.len());
    for s in SCHEDULES {
        runs.push((s, f(&backend_with(s))?));
    }
    Ok(RaceReport { runs })
}

/// Whether `a` and `b` agree: bit for bit when `tol` is 0 (NaN equal to the same NaN),
/// otherwise `|a - b| <= tol * (1 + max(|a|, |b|))` with NaN equal only to NaN.
fn agree(a: f32, b: f32, tol: f32) -> bool {
    if tol == 0.0 {
        return a.to_bits() == b.to_bits();
    }
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

impl RaceReport {
    /// The output of the forward schedule.
    pub fn output(&self) -> &[f32] {
        &self.runs[0].1
    }

    /// Whether every schedule produced the same bits.
    pub fn identical(&self) -> bool {
        self.check(0.0).is_ok()
    }

    /// The largest absolute difference between the forward output and any other
    /// (infinite where only one side is NaN or the lengths differ).
    pub fn max_abs_diff(&self) -> f32 {
        let base = self.output();
        let mut worst = 0.0f32;
        for (_, out) in &self.runs[1..] {
            if out.len() != base.len() {
                return f32::INFINITY;
            }
            for (a, b) in base.iter().zip(out) {
                let d = if a.is_nan() || b.is_nan() {
                    if a.is_nan() && b.is_nan() {
                        0.0
                    } else {
                        f32::INFINITY
                    }
                } else {
                    (a - b).abs()
                };
                worst = worst.max(d);
            }
        }
        worst
    }

    /// `Ok` if every schedule agrees with the forward one within `tol` (see
    /// [`agree`]; 0 = bitwise); otherwise an error naming the schedules, the first
    /// differing element and how many differ.
    pub fn check(&self, tol: f32) -> Result<()> {
        let (s0, base) = &self.runs[0];
        for (s, out) in &self.runs[1..] {
            if out.len() != base.len() {
                return Err(Error::Cuda(format!(
                    "emu race check: {s0:?} gave {} values, {s:?} {}",
                    base.len(),
                    out.len()
                )));
            }
            let bad: Vec<usize> = (0..base.len()).filter(|&i| !agree(base[i], out[i], tol)).collect();
            if let Some(&i) = bad.first() {
                return Err(Error::Cuda(format!(
                    "emu race check: schedules {s0:?} and {s:?} differ at {} of {} elements (tolerance {tol}); \
                     first at element {i}: {} vs {} (a missing barrier, or an order-dependent reduction)",
                    bad.len(),
                    base.len(),
                    base[i],
                    out[i]
                )));
            }
        }
        Ok(())
    }
}

//! The accepted range of every numeric option, in one place: the command line
//! parses with these (so a bad value is refused before any work, with the range in
//! the message and in `--help`), and the library checks its option structs with the
//! same ones (so a caller of [`crate::train::run`] gets the same answer as a user of
//! `lesionseg train`).
//!
//! An integer option is a [`Count`] (whole numbers in `min..=max`, optionally a
//! multiple of a step); a real one a [`Real`] (finite, in an interval whose ends may
//! be open). Parsing accepts what Rust's `str::parse` accepts and then checks the
//! range, so `NaN`, `inf`, `-1` for a count, `1e300` and `2^62` are all one clear
//! message naming the flag.

use crate::error::{Error, Result};

/// A whole-number option: `min..=max`, and a multiple of `step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    /// The flag, e.g. `--size`.
    pub flag: &'static str,
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Values must be multiples of this (1: any).
    pub step: u64,
}

impl Count {
    /// Values `min..=max` of `flag`.
    pub const fn new(flag: &'static str, min: u64, max: u64) -> Self {
        Count { flag, min, max, step: 1 }
    }

    /// The same range, multiples of `step` only.
    pub const fn multiple_of(self, step: u64) -> Self {
        Count { step, ..self }
    }

    /// The range in words, as `--help` shows it: `range: 32 to 8192, multiples of 32`.
    pub fn range(&self) -> String {
        let max = if self.max == u64::MAX { "2^64-1".to_string() } else { self.max.to_string() };
        let step = if self.step > 1 { format!(", multiples of {}", self.step) } else { String::new() };
        format!("range: {} to {max}{step}", self.min)
    }

    /// `text` with the range appended (a flag's help).
    pub fn help(&self, text: &str) -> String {
        format!("{text} ({})", self.range())
    }

    /// Why `v` is not accepted, if it is not.
    fn why_not(&self, v: u64) -> Option<String> {
        if v < self.min || v > self.max {
            Some(format!("{v} is out of range ({})", self.range()))
        } else if !v.is_multiple_of(self.step) {
            Some(format!("{v} is not a multiple of {} ({})", self.step, self.range()))
        } else {
            None
        }
    }

    /// Checks a value held by a library option struct.
    pub fn check(&self, v: impl TryInto<u64>) -> Result<()> {
        let v = v.try_into().unwrap_or(u64::MAX);
        match self.why_not(v) {
            Some(reason) => Err(Error::argument(self.flag, reason)),
            None => Ok(()),
        }
    }

    /// Parses a command-line value (the message does not repeat the flag: the
    /// parser names it).
    pub fn parse<T: TryFrom<u64>>(&self, s: &str) -> std::result::Result<T, String> {
        let v: u64 = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number ({})", self.range()))?;
        if let Some(reason) = self.why_not(v) {
            return Err(reason);
        }
        T::try_from(v).map_err(|_| format!("{v} does not fit this machine's integers ({})", self.range()))
    }
}

/// A real-number option: finite, between `min` and `max`, each end included
/// unless marked open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Real {
    /// The flag, e.g. `--lr`.
    pub flag: &'static str,
    /// Lower end.
    pub min: f64,
    /// Upper end.
    pub max: f64,
    /// `min` itself is excluded.
    pub min_open: bool,
    /// `max` itself is excluded.
    pub max_open: bool,
}

impl Real {
    /// Values in `(min, max]` (the usual shape: positive, with a ceiling).
    pub const fn above(flag: &'static str, min: f64, max: f64) -> Self {
        Real { flag, min, max, min_open: true, max_open: false }
    }

    /// Values in `(min, max)`.
    pub const fn between(flag: &'static str, min: f64, max: f64) -> Self {
        Real { flag, min, max, min_open: true, max_open: true }
    }

    /// The range in words: `range: (0, 4]`.
    pub fn range(&self) -> String {
        let (l, r) = (if self.min_open { "(" } else { "[" }, if self.max_open { ")" } else { "]" });
        let num = |v: f64| if v.abs() >= 1e7 { format!("{v:.3e}") } else { v.to_string() };
        format!("range: {l}{}, {}{r}", num(self.min), num(self.max))
    }

    /// `text` with the range appended (a flag's help).
    pub fn help(&self, text: &str) -> String {
        format!("{text} ({})", self.range())
    }

    fn why_not(&self, v: f64) -> Option<String> {
        let low = if self.min_open { v > self.min } else { v >= self.min };
        let high = if self.max_open { v < self.max } else { v <= self.max };
        (!(v.is_finite() && low && high)).then(|| format!("{v} is out of range ({})", self.range()))
    }

    /// Checks a value held by a library option struct.
    pub fn check(&self, v: f64) -> Result<()> {
        match self.why_not(v) {
            Some(reason) => Err(Error::argument(self.flag, reason)),
            None => Ok(()),
        }
    }

    /// Parses a command-line value.
    pub fn parse(&self, s: &str) -> std::result::Result<f64, String> {
        let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number ({})", self.range()))?;
        match self.why_not(v) {
            Some(reason) => Err(reason),
            None => Ok(v),
        }
    }
}

/// A seed: any 64-bit number.
pub const SEED: Count = Count::new("--seed", 0, u64::MAX);
/// The network's input side (train, predict, profile): the network pools five
/// times, so a multiple of 32; 8192 is far beyond any GPU's memory at batch 1.
pub const NET_SIZE: Count = Count::new("--size", 32, 8192).multiple_of(32);
/// Images per step or forward pass.
pub const BATCH_SIZE: Count = Count::new("--batch-size", 1, 4096);
/// The channel width factor of the model (1 = the paper's).
pub const WIDTH: Real = Real::above("--width", 0.0, 4.0);
/// Training epochs in total.
pub const EPOCHS: Count = Count::new("--epochs", 1, 1_000_000);
/// Adam's learning rate: positive, and finite in f32 (the kernels' type).
pub const LR: Real = Real::above("--lr", 0.0, f32::MAX as f64);
/// Training time limit in minutes (ten years at most: a `Duration` must hold it).
pub const TIME_LIMIT: Real = Real::above("--time-limit", 0.0, 5_256_000.0);
/// The probability threshold of a mask.
pub const THRESHOLD: Real = Real::between("--threshold", 0.0, 1.0);
/// Synthetic images.
pub const SYNTH_COUNT: Count = Count::new("--count", 1, crate::data::synth::MAX_COUNT as u64);
/// Synthetic image side.
pub const SYNTH_SIZE: Count =
    Count::new("--size", crate::data::synth::MIN_SIZE as u64, crate::data::synth::MAX_SIZE as u64);
/// Untimed profile steps.
pub const WARMUP: Count = Count::new("--warmup", 0, 10_000);
/// Timed profile steps (at least one, or there is nothing to report).
pub const STEPS: Count = Count::new("--steps", 1, 100_000);
/// A peak throughput in GFLOP/s (10 PFLOP/s is beyond any single device).
pub const PEAK_GFLOPS: Real = Real::above("--peak-gflops", 0.0, 1e7);
/// The demo's training time in seconds (at least one epoch; a week at most).
pub const DEMO_SECONDS: Count = Count::new("--seconds", 1, 7 * 24 * 3600);
/// Data-parallel replicas on one machine (threads with their own backend).
pub const REPLICAS: Count = Count::new("--replicas", 1, 256);
/// A GPU ordinal (`--gpus`).
pub const GPU: Count = Count::new("--gpus", 0, 1023);
/// Seconds a replica waits for the others at a collective before it gives up.
pub const REPLICA_TIMEOUT: Real = Real::above("--replica-timeout", 0.0, 86_400.0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_reals_parse_and_check() {
        assert_eq!(NET_SIZE.parse::<usize>("64"), Ok(64));
        for bad in ["0", "-1", "NaN", "inf", "1e300", "1099511627776", "4611686018427387904", "48", ""] {
            let e = NET_SIZE.parse::<usize>(bad).unwrap_err();
            assert!(e.contains("range: 32 to 8192, multiples of 32"), "{bad}: {e}");
        }
        assert_eq!(SEED.parse::<u64>("4611686018427387904"), Ok(1 << 62));
        assert!(NET_SIZE.check(96usize).is_ok());
        let e = NET_SIZE.check(100usize).unwrap_err().to_string();
        assert!(e.starts_with("--size: 100 is not a multiple of 32"), "{e}");
        assert_eq!(LR.parse("1e-3"), Ok(1e-3));
        for bad in ["0", "-1", "NaN", "inf", "-inf", "1e300", "x"] {
            assert!(LR.parse(bad).is_err(), "--lr {bad}");
        }
        assert!(THRESHOLD.parse("1").is_err() && THRESHOLD.parse("0.3").is_ok());
        assert!(WIDTH.check(f64::NAN).is_err() && WIDTH.check(4.0).is_ok());
        assert_eq!(WIDTH.range(), "range: (0, 4]");
    }
}

//! `ReduceLROnPlateau` as PyTorch implements it (mode `min`, relative threshold
//! 1e-4, no cooldown, no minimum learning rate): the learning rate is multiplied by
//! `factor` once the monitored value has failed to improve for more than
//! `patience` epochs in a row.

/// The scheduler's whole state (saved in checkpoints, so `--resume` is exact).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plateau {
    /// Multiplier applied on a plateau (0.8 in the paper's recipe).
    pub factor: f64,
    /// Epochs without improvement tolerated (5).
    pub patience: u32,
    /// Best value seen so far (infinite before the first epoch).
    pub best: f64,
    /// Epochs since the last improvement.
    pub bad_epochs: u32,
}

/// PyTorch's default `threshold`: an improvement must beat `best·(1 − 1e-4)`.
const THRESHOLD: f64 = 1e-4;

impl Plateau {
    /// A fresh scheduler.
    pub fn new(factor: f64, patience: u32) -> Self {
        Plateau { factor, patience, best: f64::INFINITY, bad_epochs: 0 }
    }

    /// Records one epoch's `value`; returns the new learning rate.
    pub fn step(&mut self, value: f64, lr: f64) -> f64 {
        if value < self.best * (1.0 - THRESHOLD) {
            self.best = value;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.bad_epochs > self.patience {
            self.bad_epochs = 0;
            lr * self.factor
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_after_patience_plus_one_bad_epochs() {
        let mut s = Plateau::new(0.8, 2);
        let mut lr = 1e-3;
        for v in [1.0, 0.9, 0.95, 0.95] {
            lr = s.step(v, lr);
            assert_eq!(lr, 1e-3);
        }
        lr = s.step(0.9, lr); // third epoch without beating 0.9·(1−1e-4)
        assert!((lr - 8e-4).abs() < 1e-12);
        assert_eq!(s.bad_epochs, 0);
        lr = s.step(0.5, lr);
        assert!((lr - 8e-4).abs() < 1e-12 && s.best == 0.5);
    }
}

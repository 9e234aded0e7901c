//! The run's record: one CSV row per epoch (`metrics.csv`, rewritten whole through
//! [`crate::output`] after each epoch, so a resumed run continues the same file and
//! a kill never leaves half a row), the curve plot redrawn from it, the progress bar
//! and the one-line epoch summary.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::TrainState;
use super::validate::ValMetrics;
use crate::data::ATTRIBUTES;
use crate::error::Result;

/// Appends epoch rows to `metrics.csv` and keeps them for the plot.
pub struct MetricsLog {
    path: PathBuf,
    /// The file's lines, header first.
    lines: RefCell<Vec<String>>,
    /// (epoch, train loss, val loss, micro Jaccard, mean Jaccard) of every epoch.
    rows: RefCell<Vec<[f64; 5]>>,
}

/// Largest `metrics.csv` read back (a row is ~300 bytes; a million epochs fit).
const MAX_LOG_BYTES: u64 = 1 << 30;

fn header() -> String {
    let mut cols: Vec<String> = [
        "epoch",
        "step",
        "lr",
        "train_loss",
        "val_loss",
        "val_loss1",
        "val_loss2",
        "val_loss3",
        "micro_jaccard",
        "mean_jaccard",
    ]
    .map(String::from)
    .to_vec();
    for prefix in ["jaccard", "auc_mid", "auc_last"] {
        cols.extend(ATTRIBUTES.iter().map(|a| format!("{prefix}_{a}")));
    }
    cols.push("seconds".into());
    cols.join(",")
}

impl MetricsLog {
    /// Opens `out/metrics.csv`, keeping the rows of epochs up to `epochs_done` (a
    /// resumed run drops rows written after its checkpoint).
    pub fn open(out: &Path, epochs_done: u32) -> Result<Self> {
        let path = out.join("metrics.csv");
        let mut kept = vec![header()];
        let mut rows = Vec::new();
        if path.exists() {
            let text = crate::data::read_text(&path, MAX_LOG_BYTES)?;
            for line in text.lines().skip(1) {
                let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap_or(f64::NAN)).collect();
                if v.len() > 9 && v[0] as u32 <= epochs_done && v[0] >= 1.0 {
                    rows.push([v[0], v[3], v[4], v[8], v[9]]);
                    kept.push(line.to_string());
                }
            }
        }
        let log = MetricsLog { path, lines: RefCell::new(kept), rows: RefCell::new(rows) };
        log.write()?;
        Ok(log)
    }

    fn write(&self) -> Result<()> {
        let text = self.lines.borrow().join("\n") + "\n";
        crate::output::write(&self.path, text.as_bytes(), crate::output::Sync::Rename)
    }

    /// Appends the row of the epoch just finished (`lr` is the rate it ran at).
    pub fn append(&self, s: &TrainState, train_loss: f64, lr: f64, v: &ValMetrics, took: Duration) -> Result<()> {
        let mut cols = vec![s.epoch.to_string(), s.step.to_string(), format!("{lr:e}")];
        let l = &v.loss;
        let c = &v.scores.counts;
        for x in [train_loss, l.loss, l.loss1, l.loss2, l.loss3, c.micro_jaccard(), c.mean_jaccard()] {
            cols.push(format!("{x:.6}"));
        }
        let jaccard: Vec<f64> = (0..ATTRIBUTES.len()).map(|k| c.jaccard(k)).collect();
        for x in jaccard.iter().chain(&v.scores.auc_mid).chain(&v.scores.auc_last) {
            cols.push(format!("{x:.6}"));
        }
        cols.push(format!("{:.2}", took.as_secs_f64()));
        self.lines.borrow_mut().push(cols.join(","));
        self.write()?;
        self.rows.borrow_mut().push([s.epoch as f64, train_loss, l.loss, c.micro_jaccard(), c.mean_jaccard()]);
        Ok(())
    }

    /// Redraws the loss and Jaccard curves.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let rows = self.rows.borrow();
        let series = |i: usize| rows.iter().map(|r| (r[0], r[i])).collect::<Vec<_>>();
        crate::plot::plot_training(path, &series(1), &series(2), &series(3), &series(4))
    }
}

/// A progress bar for one epoch (hidden when `quiet`).
pub fn progress(quiet: bool, batches: u64, epoch: u32, epochs: u32) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(batches);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}

/// One line per epoch: losses, scores, learning rate.
pub fn epoch_line(s: &TrainState, epochs: u32, train_loss: f64, v: &ValMetrics) -> String {
    let c = &v.scores.counts;
    let jac: Vec<String> = (0..ATTRIBUTES.len()).map(|k| crate::metrics::fmt_score(c.jaccard(k))).collect();
    format!(
        "epoch {}/{epochs}: train loss {train_loss:.4} | val loss {:.4} (mask {:.4}, mid {:.4}, last {:.4}) | \
         official Jaccard {:.4}, mean {:.4} [{}] | lr {:.2e}",
        s.epoch,
        v.loss.loss,
        v.loss.loss1,
        v.loss.loss2,
        v.loss.loss3,
        c.micro_jaccard(),
        c.mean_jaccard(),
        jac.join(" "),
        s.lr
    )
}

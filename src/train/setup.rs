//! Everything `train` checks and prepares before the first step, in the order
//! [`super::run`] calls it: `--resume` against the checkpoint's header, the run
//! folder (a run already there is not overwritten without `--force`; temporary
//! files of killed runs are removed), memory and disk against what the run needs,
//! then the data and its split. Nothing is decoded before the checks pass.

use std::path::Path;

use super::checkpoint::{self, TrainState};
use super::{Recipe, TrainOptions, LAST, RUN_FILES};
use crate::backend::Backend;
use crate::data::cache::{self, LoadOptions, LoadReport};
use crate::data::isic::{self, Dataset, Split};
use crate::error::{Error, Result};
use crate::model::{ParamTable, Plan, UNetConfig};
use crate::resources::{available_memory, fmt_bytes, free_disk};

/// For `--resume`: the checkpoint's model shape and state, read from its header
/// alone, after checking that every option given agrees with them. `None` for a
/// fresh run.
pub(super) fn check_resume(o: &TrainOptions) -> Result<Option<(UNetConfig, TrainState)>> {
    if !o.resume {
        return Ok(None);
    }
    let last = o.out.join(LAST);
    let refuse = |reason: String| Error::Resume { path: last.clone(), reason };
    if !last.exists() {
        return Err(refuse("no checkpoint there; start a run without --resume".into()));
    }
    let (cfg, state) = checkpoint::peek(&last)?;
    let state = state.ok_or_else(|| refuse("a weight file, not a training checkpoint (no training state)".into()))?;
    let differs = |flag: &str, given: String, saved: String| {
        refuse(format!("the run was trained with {flag} {saved}, not {given}; drop {flag} or pass {flag} {saved}"))
    };
    if let Some(size) = o.size.filter(|&s| s != state.size) {
        return Err(differs("--size", size.to_string(), state.size.to_string()));
    }
    if let Some(seed) = o.seed.filter(|&s| s != state.seed) {
        return Err(differs("--seed", seed.to_string(), state.seed.to_string()));
    }
    if let (Some(given), Some(saved)) = (o.batch_size, state.batch_size) {
        if given != saved {
            return Err(differs("--batch-size", given.to_string(), saved.to_string()));
        }
    }
    if let Some(width) = o.width {
        if UNetConfig::scaled(width)? != cfg {
            let saved = state.width.map_or_else(|| format!("of conv1 with {} channels", cfg.enc[0]), |w| w.to_string());
            return Err(differs("--width", width.to_string(), saved));
        }
    }
    Ok(Some((cfg, state)))
}

/// The values to train with: given, else the checkpoint's, else the defaults.
pub(super) fn recipe(o: &TrainOptions, resumed: Option<&(UNetConfig, TrainState)>) -> Result<Recipe> {
    let state = resumed.map(|(_, s)| s);
    let width = match resumed {
        Some((_, s)) => o.width.or(s.width),
        None => Some(o.width.unwrap_or(super::DEFAULT_WIDTH)),
    };
    let cfg = match resumed {
        Some((cfg, _)) => *cfg,
        None => UNetConfig::scaled(width.unwrap_or(super::DEFAULT_WIDTH))?,
    };
    Ok(Recipe {
        size: o.size.or(state.map(|s| s.size)).unwrap_or(super::DEFAULT_SIZE),
        batch_size: o.batch_size.or(state.and_then(|s| s.batch_size)).unwrap_or(super::DEFAULT_BATCH_SIZE),
        seed: o.seed.or(state.map(|s| s.seed)).unwrap_or(super::DEFAULT_SEED),
        cfg,
        width,
    })
}

/// Creates the run folder, removes temporary files that killed runs left in it, and
/// refuses to overwrite a run that is there (unless `--resume` continues it or
/// `--force` starts over, removing its files first).
pub(super) fn prepare_out(o: &TrainOptions) -> Result<()> {
    if o.out.exists() && !o.out.is_dir() {
        return Err(Error::Output { path: o.out.clone(), reason: "is not a folder".into() });
    }
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    crate::output::remove_stale_temps(&o.out);
    if o.resume {
        return Ok(());
    }
    let present: Vec<&str> = RUN_FILES.into_iter().filter(|f| o.out.join(f).exists()).collect();
    if present.is_empty() {
        return Ok(());
    }
    if !o.force {
        return Err(Error::Output {
            path: o.out.clone(),
            reason: format!(
                "already holds a training run ({}); pass --resume to continue it, or --force to start over \
                 (its files are replaced), or choose another --out",
                present.join(", ")
            ),
        });
    }
    for f in present {
        let path = o.out.join(f);
        // Kept when it is the split this run reads: it is rewritten with the same rows.
        if o.split_csv.as_deref().is_some_and(|s| crate::output::same_file(s, &path)) {
            continue;
        }
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Loads the dataset at the recipe's size, after checking that the machine has the
/// memory the run needs and the disk its cache needs.
pub(super) fn load_data<B: Backend>(be: &B, o: &TrainOptions, r: &Recipe) -> Result<(Dataset, LoadReport)> {
    let opts = LoadOptions { skip_bad: o.skip_bad, progress: !o.quiet, ..LoadOptions::default() };
    let plan = cache::plan(&o.data, r.size, &opts)?;
    check_resources(be, o, r, &plan)?;
    cache::load_planned(plan, &opts)
}

/// Host memory for the decoded data (and, on a backend without device memory, the
/// model, its gradients, Adam's state and the activation arenas of a training batch
/// and of the last, shorter validation batch); disk for the cache when it must be
/// written. Both figures are in the message when either is short.
fn check_resources<B: Backend>(be: &B, o: &TrainOptions, r: &Recipe, plan: &cache::LoadPlan) -> Result<()> {
    let cfg = r.cfg;
    let n = plan.samples().len();
    let ids: Vec<String> = plan.samples().iter().map(|s| s.id.clone()).collect();
    // The split decides the shorter validation batch; a bad split CSV is reported later.
    let val = isic::make_split(&ids, o.split_csv.as_deref(), super::VAL_FRACTION, r.seed).map_or(0, |s| s.val.len());
    let arena = |batch: usize| -> Result<u64> {
        if batch == 0 {
            return Ok(0);
        }
        let plan = Plan::new(&cfg, batch, r.size, r.size)?;
        Ok(4 * (2 * plan.len as u64 + (batch * r.size * r.size * cfg.classes) as u64))
    };
    let model = 16 * ParamTable::new(&cfg).len as u64 + arena(r.batch_size)? + arena(val % r.batch_size)?;
    let on_host = be.device_memory_in_use().is_none();
    let data = plan.memory_bytes();
    let memory = data + if on_host { model } else { 0 };
    let disk = plan.cache_bytes_to_write();
    let cache_dir = plan.cache_path().and_then(Path::parent).unwrap_or(&o.data);
    let (avail, free) = (available_memory(), free_disk(cache_dir));
    let short_memory = avail.is_some_and(|a| memory > a);
    let short_disk = free.is_some_and(|f| disk > f);
    if !short_memory && !short_disk {
        return Ok(());
    }
    let known = |v: Option<u64>| v.map_or("an unknown amount".to_string(), fmt_bytes);
    let model_part = if on_host {
        format!(" + the model and its buffers at batch {}: {}", r.batch_size, fmt_bytes(model))
    } else {
        String::new()
    };
    Err(Error::Resources(format!(
        "--size {}: the run needs {} of memory (the {n} decoded images {}{model_part}) where {} is available, and \
         {} of disk for the data cache in {} where {} is free; lower --size or --batch-size, or free {}",
        r.size,
        fmt_bytes(memory),
        fmt_bytes(data),
        known(avail),
        fmt_bytes(disk),
        cache_dir.display(),
        known(free),
        if short_memory { "memory" } else { "disk" }
    )))
}

/// The train/validation split (a CSV, or seeded), written to `out/split.csv` when
/// `write` (the process of rank 0) unless it was read from that very file; at least
/// one batch of training images and one validation image.
pub(super) fn split(o: &TrainOptions, ds: &Dataset, r: &Recipe, write: bool) -> Result<Split> {
    let split = isic::make_split(&ds.ids, o.split_csv.as_deref(), super::VAL_FRACTION, r.seed)?;
    let path = o.out.join("split.csv");
    if write && !o.split_csv.as_deref().is_some_and(|s| crate::output::same_file(s, &path)) {
        isic::write_split_csv(&path, &ds.ids, &split)?;
    }
    if split.val.is_empty() {
        return Err(Error::Data {
            path: o.data.clone(),
            reason: "no validation images: add data or give a split with some `val` rows".into(),
        });
    }
    let batch = r.batch_size;
    if split.train.len() < batch {
        return Err(Error::Data {
            path: o.data.clone(),
            reason: format!(
                "{} training images, fewer than one batch of {batch}; lower --batch-size or add data",
                split.train.len()
            ),
        });
    }
    Ok(split)
}

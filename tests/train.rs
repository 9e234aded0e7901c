//! Training end to end on a tiny synthetic set: an interrupted run resumed from its
//! checkpoint ends bit-identical to an uninterrupted one (same steps, learning rate,
//! optimizer state, batches and augmentations); a diverging run stops with a clear
//! error and keeps its last good checkpoint; bad data is reported or skipped.

use std::path::{Path, PathBuf};

use lesionseg::backend::cpu::Cpu;
use lesionseg::train::{self, checkpoint, Stop, TrainOptions};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    lesionseg::data::synth::synthesize(&data, 20, 64, 7).unwrap();
    data
}

fn options(data: &Path, out: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(data.to_path_buf(), out.to_path_buf());
    o.epochs = 2;
    o.batch_size = Some(4);
    o.size = Some(64);
    o.width = Some(1.0 / 16.0);
    o.seed = Some(3);
    o.quiet = true;
    o
}

#[test]
fn interrupted_then_resumed_equals_uninterrupted() {
    let dir = temp("resume");
    let data = data(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let full = train::run(&Cpu, &options(&data, &a)).unwrap();
    assert_eq!(full.stop, Stop::Finished);
    assert_eq!(full.state.step, 8, "16 training images / batch 4 = 4 steps per epoch, 2 epochs");

    // Stop mid-epoch 2 (like Ctrl-C: the last checkpoint is written), then resume.
    let mut first = options(&data, &b);
    first.max_steps = Some(6);
    let part = train::run(&Cpu, &first).unwrap();
    assert_eq!(part.stop, Stop::Budget);
    let saved = checkpoint::load(&b.join(train::LAST)).unwrap().state.unwrap();
    assert_eq!((saved.step, saved.epoch, saved.batch_in_epoch), (6, 1, 2));
    let mut second = options(&data, &b);
    second.resume = true;
    let resumed = train::run(&Cpu, &second).unwrap();
    assert_eq!(resumed.stop, Stop::Finished);
    assert_eq!(resumed.state.step, full.state.step);
    assert_eq!(resumed.state.lr, full.state.lr);

    let (x, y) = (checkpoint::load(&a.join(train::LAST)).unwrap(), checkpoint::load(&b.join(train::LAST)).unwrap());
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(bits(&x.params) == bits(&y.params), "parameters differ after resume");
    assert!(bits(x.adam_m.as_ref().unwrap()) == bits(y.adam_m.as_ref().unwrap()), "Adam m differs");
    assert!(bits(x.adam_v.as_ref().unwrap()) == bits(y.adam_v.as_ref().unwrap()), "Adam v differs");
    for f in [train::BEST_LOSS, train::BEST_JACCARD, "metrics.csv", "curves.png", "split.csv"] {
        assert!(b.join(f).exists(), "{f} written");
    }
    let rows = std::fs::read_to_string(b.join("metrics.csv")).unwrap().lines().count();
    assert_eq!(rows, 3, "header + one row per epoch, none duplicated by the resume");
    // The log is identical too, the interrupted epoch's train loss included (all
    // but the last column, the epoch's wall time).
    let log = |dir: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
    };
    assert_eq!(log(&a), log(&b), "metrics.csv differs after the resume");
}

#[test]
fn diverging_run_stops_with_clear_error_and_keeps_checkpoint() {
    let dir = temp("nan");
    let data = data(&dir);
    let out = dir.join("run");
    let mut o = options(&data, &out);
    o.epochs = 1;
    train::run(&Cpu, &o).unwrap();
    let good = std::fs::read(out.join(train::LAST)).unwrap();
    o.epochs = 3;
    o.resume = true;
    o.lr = Some(3e38); // the first Adam step overflows the parameters to ±inf
    let err = train::run(&Cpu, &o).expect_err("a learning rate of 3e38 must diverge").to_string();
    assert!(err.contains("loss became") && err.contains("last.safetensors"), "{err}");
    assert_eq!(std::fs::read(out.join(train::LAST)).unwrap(), good, "last good checkpoint kept");
}

#[test]
fn checkpoints_load_as_weights_for_forward_and_predict() {
    let dir = temp("as-weights");
    let data = data(&dir);
    let out = dir.join("run");
    let mut o = options(&data, &out);
    o.epochs = 1;
    train::run(&Cpu, &o).unwrap();
    let last = out.join(train::LAST);
    let model = lesionseg::forward::load_model(&Cpu, &last).expect("forward loads a training checkpoint");
    let (same, meta) = lesionseg::predict::load_checkpoint(&Cpu, &last).unwrap();
    assert_eq!(model.table.len, same.table.len);
    assert_eq!(meta.get("size").map(String::as_str), Some("64"), "predict finds the training size");
}

/// Ctrl-C during `train`: the checkpoint is saved, the exit status is 130 (so
/// `train && predict` stops), and the message says how to resume.
#[test]
fn ctrl_c_saves_and_exits_130() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = temp("ctrl-c");
    let data = data(&dir);
    let run = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args(["train", "--device", "cpu", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .args(["--size", "64", "--width", "0.0625", "--batch-size", "4", "--epochs", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line on stderr (the data summary) comes after the handler is set.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(130), "stdout: {stdout}\nstderr: {first}{rest}");
    assert!(run.join(train::LAST).exists(), "no checkpoint saved");
    assert!(format!("{stdout}{rest}").contains("--resume"), "says how to resume: {stdout}{rest}");
}

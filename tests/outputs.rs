//! Writes never destroy what they should not: a device file, FIFO or symlink given
//! as an output is written in place (never renamed over), an output that is an
//! input of the same command is refused, a folder holding a run or a dataset is not
//! overwritten without `--force`, and temporary files left by a killed run are
//! removed by the next run in that folder.

use std::fs;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{lesionseg, ok};

pub mod common;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-outputs-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command that must be refused: exit 1, one `error:` line, returned.
fn refused(args: &[&str]) -> String {
    let out = lesionseg(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: want exit 1; stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: want one error line, got:\n{stderr}");
    errors[0].to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A scored pair of folders: `pred` and `truth` with two images' masks each.
fn eval_folders(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    ok(&["synth", "--out", s(&data), "--count", "2", "--size", "32", "--seed", "1"]);
    let truth = data.join("ISIC2018_Task2_Training_GroundTruth_v3");
    let pred = dir.join("pred");
    fs::create_dir_all(&pred).unwrap();
    for e in fs::read_dir(&truth).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), pred.join(e.file_name())).unwrap();
    }
    (pred, truth)
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success(), "mkfifo {}", path.display());
}

/// `eval --json` (and `forward --output`) to a symlink, a FIFO or, as root, a
/// character device: the special file is still there afterwards and received the
/// output; nothing was renamed over it.
#[test]
fn special_files_given_as_outputs_are_written_in_place() {
    let dir = temp("special");
    let (pred, truth) = eval_folders(&dir);
    let eval = |json: &Path| ok(&["eval", "--pred", s(&pred), "--truth", s(&truth), "--json", s(json)]);

    // A symlink stays a symlink; its target receives the report.
    let target = dir.join("target.json");
    fs::write(&target, "old").unwrap();
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    eval(&link);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
    assert!(fs::read_to_string(&target).unwrap().contains("micro_average"), "the link's target was not written");

    // A FIFO stays a FIFO; a reader gets the report. The reader is opened first and
    // non-blocking, so the writer's open succeeds and the report fits the pipe buffer.
    let fifo = dir.join("report.fifo");
    mkfifo(&fifo);
    const O_NONBLOCK: i32 = 0o4000;
    let mut reader = fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(&fifo).unwrap();
    eval(&fifo);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced by a regular file");
    let mut got = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut got);
    assert!(got.contains("micro_average"), "the FIFO's reader got: {got:?}");

    // A mask `predict` writes into its folder, there already as a symlink.
    let (images, masks) = (dir.join("images"), dir.join("masks"));
    fs::create_dir_all(&images).unwrap();
    fs::create_dir_all(&masks).unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([150, 90, 70])).save(images.join("ISIC_0000001.png")).unwrap();
    let mask_target = dir.join("mask-target.png");
    fs::write(&mask_target, "old").unwrap();
    let mask_link = masks.join("ISIC_0000001_attribute_streaks.png");
    std::os::unix::fs::symlink(&mask_target, &mask_link).unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/narrow_weights.safetensors");
    ok(&[
        "predict",
        "--device",
        "cpu",
        "--images",
        s(&images),
        "--weights",
        s(&weights),
        "--out",
        s(&masks),
        "--size",
        "32",
    ]);
    assert!(fs::symlink_metadata(&mask_link).unwrap().file_type().is_symlink(), "predict replaced the symlink");
    assert!(fs::read(&mask_target).unwrap().starts_with(b"\x89PNG"), "the link's target did not get the mask");

    // A character device (a private /dev/null made with mknod, as root only).
    let null = dir.join("null");
    let made = Command::new("mknod").arg(&null).args(["c", "1", "3"]).status().is_ok_and(|s| s.success());
    if made {
        eval(&null);
        assert!(fs::symlink_metadata(&null).unwrap().file_type().is_char_device(), "the device was replaced");
        let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/narrow_weights.safetensors");
        let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/narrow_n1_64x96.safetensors");
        ok(&["forward", "--device", "cpu", "--weights", s(&weights), "--input", s(&input), "--output", s(&null)]);
        assert!(fs::symlink_metadata(&null).unwrap().file_type().is_char_device(), "forward replaced the device");
    } else {
        println!("not root: the character-device case is SKIPPED (mknod failed)");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// `forward --output` equal to `--input` or `--weights` (by any path, including a
/// hard link), and `eval --json` naming one of the masks it reads, are refused and
/// leave the inputs as they were.
#[test]
fn outputs_that_are_inputs_are_refused() {
    let dir = temp("same");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (weights, input) = (dir.join("w.safetensors"), dir.join("in.safetensors"));
    fs::copy(fixtures.join("narrow_weights.safetensors"), &weights).unwrap();
    fs::copy(fixtures.join("narrow_n1_64x96.safetensors"), &input).unwrap();
    let (w_before, i_before) = (fs::read(&weights).unwrap(), fs::read(&input).unwrap());
    let forward = |output: &Path| {
        refused(&["forward", "--device", "cpu", "--weights", s(&weights), "--input", s(&input), "--output", s(output)])
    };
    let err = forward(&input);
    assert!(err.contains("--output") && err.contains("--input"), "{err}");
    let err = forward(&weights);
    assert!(err.contains("--output") && err.contains("--weights"), "{err}");
    let dotted = dir.join(".").join("in.safetensors");
    forward(&dotted);
    let hard = dir.join("hard-link.safetensors");
    fs::hard_link(&input, &hard).unwrap();
    forward(&hard);
    assert!(fs::read(&weights).unwrap() == w_before && fs::read(&input).unwrap() == i_before, "an input changed");

    let (pred, truth) = eval_folders(&dir);
    let mask = fs::read_dir(&pred).unwrap().next().unwrap().unwrap().path();
    let before = fs::read(&mask).unwrap();
    let err = refused(&["eval", "--pred", s(&pred), "--truth", s(&truth), "--json", s(&mask)]);
    assert!(err.contains("--json"), "{err}");
    assert_eq!(fs::read(&mask).unwrap(), before, "eval overwrote a prediction");
    let truth_mask = truth.join(mask.file_name().unwrap());
    let before = fs::read(&truth_mask).unwrap();
    refused(&["eval", "--pred", s(&pred), "--truth", s(&truth), "--json", s(&truth_mask)]);
    assert_eq!(fs::read(&truth_mask).unwrap(), before, "eval overwrote a truth mask");
    // Nor a new file named like a mask (a later run would read it as one).
    let future = truth.join("ISIC_0099999_attribute_streaks.png");
    refused(&["eval", "--pred", s(&pred), "--truth", s(&truth), "--json", s(&future)]);
    assert!(!future.exists());
    let _ = fs::remove_dir_all(&dir);
}

/// `train --out` on a run without `--resume`, and `synth --out` on a dataset, are
/// refused with the way out named; `--force` starts over.
#[test]
fn existing_runs_and_datasets_are_not_overwritten() {
    let dir = temp("existing");
    let (data, run) = (dir.join("data"), dir.join("run"));
    ok(&["synth", "--out", s(&data), "--count", "4", "--size", "32", "--seed", "3"]);
    let image = data.join("ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg");
    let image_before = fs::read(&image).unwrap();
    let err = refused(&["synth", "--out", s(&data), "--count", "4", "--size", "32", "--seed", "4"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&image).unwrap(), image_before, "synth overwrote an image");
    ok(&["synth", "--out", s(&data), "--count", "4", "--size", "32", "--seed", "3", "--force"]);

    let train = ["train", "--device", "cpu", "--data", s(&data), "--out", s(&run), "--size", "32"];
    let small = ["--width", "0.0625", "--epochs", "1", "--batch-size", "2"];
    ok(&[&train[..], &small[..]].concat());
    let (last, metrics) = (fs::read(run.join("last.safetensors")).unwrap(), fs::read(run.join("metrics.csv")).unwrap());
    let err = refused(&[&train[..], &small[..], &["--seed", "9"]].concat());
    assert!(err.contains("--resume") && err.contains("--force") && err.contains("last.safetensors"), "{err}");
    assert_eq!(fs::read(run.join("last.safetensors")).unwrap(), last, "the run's checkpoint was replaced");
    assert_eq!(fs::read(run.join("metrics.csv")).unwrap(), metrics, "the run's metrics were replaced");
    ok(&[&train[..], &small[..], &["--seed", "9", "--force"]].concat());
    assert_ne!(fs::read(run.join("last.safetensors")).unwrap(), last, "--force starts over");
    let _ = fs::remove_dir_all(&dir);
}

/// Temporary files of a killed run (a dead process's id in the name) are removed by
/// the next run in that folder; those of a live process are left alone.
#[test]
fn temporary_files_of_a_killed_run_are_removed() {
    let dir = temp("stale");
    let (data, run) = (dir.join("data"), dir.join("run"));
    ok(&["synth", "--out", s(&data), "--count", "4", "--size", "32"]);
    fs::create_dir_all(&run).unwrap();
    // Above any pid the kernel hands out (pid_max is at most 2^22).
    let dead = (1u32 << 22) + 1;
    let stale = [
        run.join(format!(".last.safetensors.tmp.{dead}.0")),
        run.join(format!(".best_loss.safetensors.tmp.{dead}.3")),
        run.join(format!(".metrics.csv.tmp.{dead}.1")),
    ];
    for p in &stale {
        fs::write(p, vec![0u8; 4096]).unwrap();
    }
    let live = run.join(format!(".curves.png.tmp.{}.0", std::process::id()));
    fs::write(&live, b"in use").unwrap();
    let train = ["train", "--device", "cpu", "--data", s(&data), "--out", s(&run), "--size", "32"];
    ok(&[&train[..], &["--width", "0.0625", "--epochs", "1", "--batch-size", "2"]].concat());
    for p in &stale {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(live.exists(), "a live process's temporary file was removed");
    let _ = fs::remove_dir_all(&dir);
}

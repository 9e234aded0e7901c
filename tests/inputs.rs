//! Reads are bounded before they allocate, and bad data is never accepted silently:
//! a tensor file is read no further than its header says (and only when the
//! header fits the file), a training run checks its memory and disk before decoding
//! anything, a truncated image is corrupt, non-finite weights are named, invalid
//! hyperparameters are refused up front, and `--resume` refuses what disagrees with
//! its checkpoint.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod common;

use common::cli::{lesionseg, ok};
use lesionseg::tensor::Tensor;
use lesionseg::weights;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-inputs-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit 1 with one `error:` line (returned), no panic.
fn fails(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: want exit 1, got {:?}; stderr: {stderr}", out.status);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{what}: want one error line, got:\n{stderr}");
    errors[0].to_string()
}

/// Runs `lesionseg` with its address space capped at 1 GiB (`ulimit -v`), so that a
/// read of the whole of a huge input fails fast instead of exhausting the machine.
fn capped(args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("ulimit -v 1048576; exec '{}' {}", env!("CARGO_BIN_EXE_lesionseg"), quoted.join(" "));
    Command::new("bash").args(["-c", &script]).output().unwrap()
}

fn tiny_data(dir: &Path, count: usize) -> PathBuf {
    let data = dir.join("data");
    ok(&["synth", "--out", s(&data), "--count", &count.to_string(), "--size", "48", "--seed", "5"]);
    data
}

/// Feeds `fifo` with zeros from a thread until the reader closes it (or 64 MiB went
/// through); returns the bytes the reader took.
fn feed(fifo: &Path) -> std::thread::JoinHandle<usize> {
    assert!(Command::new("mkfifo").arg(fifo).status().unwrap().success());
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Write;
        let Ok(mut f) = fs::OpenOptions::new().write(true).open(&fifo) else { return 0 };
        let chunk = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < 64 << 20 {
            match f.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    })
}

/// `forward --input /dev/zero`, a 50 GB sparse file, and a header that promises more
/// than the file holds: a one-line error naming the input, without reading the data.
#[test]
fn tensor_files_are_read_no_further_than_their_header() {
    let dir = temp("bounded");
    let w = fixture("narrow_weights.safetensors");
    let forward = |input: &Path| {
        capped(&["forward", "--device", "cpu", "--weights", s(&w), "--input", s(input), "--output", s(&dir.join("o"))])
    };
    let err = fails(forward(Path::new("/dev/zero")), "/dev/zero");
    assert!(err.contains("/dev/zero"), "{err}");
    // A FIFO: what the command took from it is counted (the pipe holds 64 KiB).
    let fifo = dir.join("input.fifo");
    let fed = feed(&fifo);
    fails(forward(&fifo), "a FIFO of zeros");
    // Unblock the feeder if the command never opened the FIFO (a non-blocking open
    // for reading, so that this does not wait for a writer in turn).
    const O_NONBLOCK: i32 = 0o4000;
    let _ = fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(&fifo);
    let took = fed.join().unwrap();
    assert!(took <= 1 << 18, "read {took} bytes of a FIFO whose header says nothing");
    let sparse = dir.join("sparse.safetensors");
    fs::File::create(&sparse).unwrap().set_len(50 << 30).unwrap();
    let err = fails(forward(&sparse), "sparse");
    assert!(err.contains("sparse.safetensors"), "{err}");

    // A valid header whose tensor lies beyond the end of the file.
    let header = br#"{"input":{"dtype":"F32","shape":[1,3,65536,65536],"data_offsets":[0,51539607552]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 64]);
    let short = dir.join("short.safetensors");
    fs::write(&short, &bytes).unwrap();
    let err = fails(forward(&short), "short");
    assert!(err.contains("short.safetensors") && err.contains("`input`") && err.contains("51539607552"), "{err}");
    // The same as weights.
    let i = fixture("narrow_n1_64x96.safetensors");
    let out = capped(&["forward", "--device", "cpu", "--weights", s(&short), "--input", s(&i), "--output", "o"]);
    let err = fails(out, "short weights");
    assert!(err.contains("short.safetensors"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

/// `train --size` far beyond the machine: refused before decoding, with the memory
/// the run needs and the disk its cache needs in the message, and no cache written.
#[test]
fn training_checks_memory_and_disk_before_decoding() {
    let dir = temp("size");
    let data = tiny_data(&dir, 4);
    let run = dir.join("run");
    let args =
        ["train", "--device", "cpu", "--data", s(&data), "--out", s(&run), "--size", "8192", "--batch-size", "64"];
    let err = fails(lesionseg(&args), "--size 8192");
    assert!(err.contains("memory") && err.contains("disk"), "says both: {err}");
    let cache = data.join(".lesionseg-cache");
    let written: Vec<_> = fs::read_dir(&cache).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(written.is_empty(), "cache files written before the check: {written:?}");

    // --resume at another size is refused before a cache is built for it.
    let small = ["--width", "0.0625", "--epochs", "1", "--batch-size", "2", "--device", "cpu"];
    ok(&[&["train", "--data", s(&data), "--out", s(&run), "--size", "32"][..], &small[..]].concat());
    let out =
        lesionseg(&[&["train", "--data", s(&data), "--out", s(&run), "--size", "64", "--resume"][..], &small].concat());
    let err = fails(out, "--resume --size 64");
    assert!(err.contains("--size") && err.contains("32"), "{err}");
    let caches: Vec<String> =
        fs::read_dir(&cache).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!caches.iter().any(|n| n.starts_with("isic-64-")), "a cache was built for the refused size: {caches:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// A JPEG cut to a third of its bytes is corrupt: `train` names it (or skips and
/// counts it under `--skip-bad`), `predict` names it.
#[test]
fn truncated_images_are_corrupt() {
    let dir = temp("truncated");
    let data = dir.join("data");
    ok(&["synth", "--out", s(&data), "--count", "6", "--size", "256", "--seed", "5"]);
    let jpeg = data.join("ISIC2018_Task1-2_Training_Input/ISIC_0000002.jpg");
    let bytes = fs::read(&jpeg).unwrap();
    fs::write(&jpeg, &bytes[..bytes.len() / 3]).unwrap();
    let run = dir.join("run");
    let train = ["train", "--device", "cpu", "--data", s(&data), "--out", s(&run), "--size", "32"];
    let small = ["--width", "0.0625", "--epochs", "1", "--batch-size", "2"];
    let err = fails(lesionseg(&[&train[..], &small[..]].concat()), "train on a truncated JPEG");
    assert!(err.contains("ISIC_0000002.jpg"), "{err}");
    let said = ok(&[&train[..], &small[..], &["--skip-bad"]].concat());
    assert!(said.contains("1 skipped"), "{said}");

    let weights = run.join("last.safetensors");
    let images = data.join("ISIC2018_Task1-2_Training_Input");
    let out = lesionseg(&[
        "predict",
        "--device",
        "cpu",
        "--images",
        s(&images),
        "--weights",
        s(&weights),
        "--out",
        s(&dir.join("p")),
    ]);
    let err = fails(out, "predict on a truncated JPEG");
    assert!(err.contains("ISIC_0000002.jpg"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

/// NaN or Inf in the weights: every command that loads them names the tensor.
#[test]
fn non_finite_weights_are_named() {
    let dir = temp("nan");
    let mut tensors: Vec<(String, Tensor)> =
        weights::read_plain(&fixture("narrow_weights.safetensors")).unwrap().into_iter().collect();
    let (name, t) = tensors.iter_mut().find(|(n, _)| n.ends_with("dec2.block.0.conv.weight")).unwrap();
    t.data[5] = f32::NAN;
    let name = name.clone();
    let nan = dir.join("nan.safetensors");
    weights::write_safetensors(&nan, &tensors, None).unwrap();
    let input = fixture("narrow_n1_64x96.safetensors");
    let out = lesionseg(&[
        "forward",
        "--device",
        "cpu",
        "--weights",
        s(&nan),
        "--input",
        s(&input),
        "--output",
        s(&dir.join("o")),
    ]);
    let err = fails(out, "forward with NaN weights");
    assert!(err.contains(&name) && err.contains("nan.safetensors"), "{err}");

    let images = dir.join("images");
    fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([120, 80, 60])).save(images.join("ISIC_0000001.png")).unwrap();
    let out = lesionseg(&[
        "predict",
        "--device",
        "cpu",
        "--images",
        s(&images),
        "--weights",
        s(&nan),
        "--out",
        s(&dir.join("p")),
        "--size",
        "64",
    ]);
    let err = fails(out, "predict with NaN weights");
    assert!(err.contains(&name), "{err}");
    assert!(!dir.join("p").join("ISIC_0000001_attribute_streaks.png").exists(), "masks written from NaN weights");

    let data = tiny_data(&dir, 4);
    let out = lesionseg(&[
        "train",
        "--device",
        "cpu",
        "--data",
        s(&data),
        "--out",
        s(&dir.join("run")),
        "--size",
        "32",
        "--init",
        s(&nan),
    ]);
    fails(out, "train --init with NaN weights");
    let _ = fs::remove_dir_all(&dir);
}

/// Invalid hyperparameters are refused before any work; a run that diverges before
/// its first checkpoint does not name a checkpoint; `--resume` refuses another width.
#[test]
fn hyperparameters_and_resume_are_checked() {
    let dir = temp("hyper");
    let data = tiny_data(&dir, 6);
    let run = dir.join("run");
    let train = ["train", "--device", "cpu", "--data", s(&data), "--out", s(&run), "--size", "32"];
    let small = ["--width", "0.0625", "--epochs", "1", "--batch-size", "2"];
    for lr in ["NaN", "0", "inf", "-0.001"] {
        let out = lesionseg(&[&train[..], &small[..], &["--lr", lr]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.status.code() != Some(101), "--lr {lr}: {:?} {stderr}", out.status);
        assert!(stderr.contains("--lr"), "--lr {lr}: {stderr}");
        assert!(!run.join("last.safetensors").exists(), "--lr {lr} trained");
    }
    // Diverges at the first step: no checkpoint exists, and none is named.
    let err = fails(lesionseg(&[&train[..], &small[..], &["--lr", "3e38"]].concat()), "--lr 3e38");
    assert!(err.contains("loss became"), "{err}");
    assert!(!run.join("last.safetensors").exists());
    assert!(!err.contains("last.safetensors"), "names a checkpoint that was not written: {err}");

    ok(&[&train[..], &small[..], &["--force"]].concat());
    let resume = ["--resume", "--epochs", "2", "--batch-size", "2"];
    let err = fails(lesionseg(&[&train[..], &resume[..], &["--width", "0.125"]].concat()), "--resume --width 0.125");
    assert!(err.contains("--width"), "{err}");
    let state = lesionseg::train::checkpoint::load(&run.join("last.safetensors")).unwrap().state.unwrap();
    assert_eq!(state.epoch, 1, "the refused resume trained");
    ok(&[&train[..], &resume[..], &["--width", "0.0625"]].concat());
    let _ = fs::remove_dir_all(&dir);
}

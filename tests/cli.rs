//! The command line on bad input: one clear line on stderr, a non-zero exit, and
//! never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use lesionseg::tensor::Tensor;
use lesionseg::weights;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `lesionseg args…`, expects failure, returns stderr (checked to be one line
/// starting `error:` and free of panics).
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lesionseg")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() == 1 && lines[0].starts_with("error: "), "{args:?}: want one error line, got:\n{stderr}");
    stderr
}

fn forward_args<'a>(weights: &'a str, input: &'a str, output: &'a str) -> Vec<&'a str> {
    vec!["forward", "--device", "cpu", "--weights", weights, "--input", input, "--output", output]
}

fn good_weights() -> Vec<(String, Tensor)> {
    weights::read_plain(&fixture("narrow_weights.safetensors")).unwrap().into_iter().collect()
}

#[test]
fn truncated_weights_file_is_one_line_error() {
    let bytes = std::fs::read(fixture("narrow_weights.safetensors")).unwrap();
    let path = temp("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let input = fixture("narrow_n1_64x96.safetensors");
    let err = fails(&forward_args(path.to_str().unwrap(), input.to_str().unwrap(), temp("o1").to_str().unwrap()));
    assert!(err.contains("truncated.safetensors"), "names the file: {err}");
}

#[test]
fn missing_tensor_is_named() {
    let mut w = good_weights();
    w.retain(|(name, _)| !name.ends_with("dec3.block.1.weight"));
    let path = temp("missing.safetensors");
    weights::write_safetensors(&path, &w, None).unwrap();
    let input = fixture("narrow_n1_64x96.safetensors");
    let err = fails(&forward_args(path.to_str().unwrap(), input.to_str().unwrap(), temp("o2").to_str().unwrap()));
    assert!(err.contains("dec3.block.1.weight"), "names the tensor: {err}");
}

#[test]
fn wrong_shaped_tensor_is_named_with_both_shapes() {
    let mut w = good_weights();
    for (name, t) in w.iter_mut() {
        if name.ends_with("dec2.block.0.conv.bias") {
            *t = Tensor::zeros(vec![t.shape[0] + 1]);
        }
    }
    let path = temp("wrong-shape.safetensors");
    weights::write_safetensors(&path, &w, None).unwrap();
    let input = fixture("narrow_n1_64x96.safetensors");
    let err = fails(&forward_args(path.to_str().unwrap(), input.to_str().unwrap(), temp("o3").to_str().unwrap()));
    assert!(err.contains("dec2.block.0.conv.bias"), "names the tensor: {err}");
}

#[test]
fn input_size_not_multiple_of_32_is_one_line_error() {
    let input = Tensor::zeros(vec![1, 3, 64, 80]);
    let path = temp("input-64x80.safetensors");
    weights::write_safetensors(&path, &[("input".to_string(), input)], None).unwrap();
    let w = fixture("narrow_weights.safetensors");
    let err = fails(&forward_args(w.to_str().unwrap(), path.to_str().unwrap(), temp("o4").to_str().unwrap()));
    assert!(err.contains("multiples of 32"), "says what is wrong: {err}");
}

#[test]
fn not_a_safetensors_input_is_one_line_error() {
    let path = temp("garbage.safetensors");
    std::fs::write(&path, b"this is not a tensor file").unwrap();
    let w = fixture("narrow_weights.safetensors");
    fails(&forward_args(w.to_str().unwrap(), path.to_str().unwrap(), temp("o5").to_str().unwrap()));
}

#[test]
fn bad_training_data_is_named_or_skipped() {
    let data = temp("bad-data");
    lesionseg::data::synth::synthesize(&data, 12, 64, 3).unwrap();
    std::fs::write(data.join("ISIC2018_Task1-2_Training_Input/ISIC_0000003.jpg"), b"not a jpeg").unwrap();
    std::fs::remove_file(data.join("ISIC2018_Task2_Training_GroundTruth_v3/ISIC_0000007_attribute_streaks.png"))
        .unwrap();
    let (d, run) = (data.to_str().unwrap(), temp("bad-run"));
    let args = ["train", "--device", "cpu", "--data", d, "--out", run.to_str().unwrap(), "--size", "64"];
    let small = ["--width", "0.0625", "--epochs", "1", "--batch-size", "2"];
    let err = fails(&[&args[..], &small[..]].concat());
    assert!(err.contains("ISIC_0000003.jpg") && err.contains("ISIC_0000007_attribute_streaks.png"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args([&args[..], &small[..], &["--skip-bad"]].concat())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--skip-bad run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2 skipped"), "summary reports the skips: {stdout}");
}

/// `--precision bf16` trains through the emulated tensor-core kernels (a finite loss,
/// checkpoints written) and is one clear error on the cpu backend, which is f32 only.
#[test]
fn bf16_precision_trains_on_the_kernels_and_is_refused_on_the_cpu() {
    let (data, run) = (temp("bf16-data"), temp("bf16-run"));
    let _ = std::fs::remove_dir_all(&run);
    let d = data.to_str().unwrap();
    let synth = Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args(["synth", "--out", d, "--count", "6", "--size", "64"])
        .output()
        .unwrap();
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let args = ["train", "--data", d, "--out", run.to_str().unwrap(), "--size", "32", "--width", "0.0625"];
    let small = ["--epochs", "1", "--batch-size", "2", "--precision", "bf16"];
    let err = fails(&[&args[..], &small[..], &["--device", "cpu"]].concat());
    assert!(err.contains("--precision bf16") && err.contains("--device cuda"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args([&args[..], &small[..], &["--device", "emu"]].concat())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    // train_loss and val_loss (AUCs are undefined on one validation image).
    let last: Vec<&str> = metrics.lines().last().unwrap().split(',').collect();
    let losses: Vec<f64> = last[3..5].iter().map(|v| v.parse().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{metrics}");
    assert!(run.join("last.safetensors").exists(), "no checkpoint in {}", run.display());
}

//! No panic on any argument, and honest messages: every value-taking flag of every
//! command (read from its `--help`, so a new flag is covered without editing this
//! file) is given 0, -1, NaN, inf, 1e300, 2^40 and 2^62; each must give a clear
//! error naming the flag or a sensible run, never exit 101. Then the messages
//! that used to mislead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-args-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lesionseg_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lesionseg")).current_dir(cwd).args(args).output().unwrap()
}

/// Runs `lesionseg args…` in `cwd`, killing it after `limit`; `None` if it had to be.
fn lesionseg_within(cwd: &Path, args: &[&str], limit: Duration) -> Option<Output> {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .current_dir(cwd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Drained on threads, so a chatty command cannot block on a full pipe.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() });
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ok(cwd: &Path, args: &[&str]) {
    let out = lesionseg_in(cwd, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The values every flag is given.
const VALUES: [&str; 7] = ["0", "-1", "NaN", "inf", "1e300", "1099511627776", "4611686018427387904"];

/// Flags whose values are paths (or are written to): given numbers they would only
/// name files, which the other tests cover.
const PATH_FLAGS: [&str; 12] = [
    "--out",
    "--data",
    "--init",
    "--split",
    "--images",
    "--weights",
    "--overlays",
    "--pred",
    "--truth",
    "--json",
    "--input",
    "--output",
];

/// The subcommands, from the top-level help.
fn subcommands(cwd: &Path) -> Vec<String> {
    let help = String::from_utf8_lossy(&lesionseg_in(cwd, &["--help"]).stdout).to_string();
    let section = help.split("Commands:").nth(1).expect("a Commands: section");
    let section = section.split("Options:").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help" && w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(String::from)
        .collect()
}

/// The flags of `command` that take a value (`--name <VALUE>` in its help).
fn value_flags(cwd: &Path, command: &str) -> Vec<String> {
    let help = String::from_utf8_lossy(&lesionseg_in(cwd, &[command, "--help"]).stdout).to_string();
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") || l.starts_with("-"))
        .filter_map(|l| {
            let flag = l.split(['=', ' ']).find(|w| w.starts_with("--"))?;
            l.contains(&format!("{flag} <")).then(|| flag.to_string())
        })
        .collect()
}

/// A quick, valid command line for each subcommand: what a fuzzed value replaces.
fn base(command: &str, dir: &Path, case: usize) -> Vec<String> {
    let p = |name: &str| dir.join(format!("{name}-{case}")).to_string_lossy().into_owned();
    let data = dir.join("data").to_string_lossy().into_owned();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let w = fixtures.join("narrow_weights.safetensors").to_string_lossy().into_owned();
    let input = fixtures.join("narrow_n1_64x96.safetensors").to_string_lossy().into_owned();
    let images = dir.join("images").to_string_lossy().into_owned();
    let truth = dir.join("data/ISIC2018_Task2_Training_GroundTruth_v3").to_string_lossy().into_owned();
    let args: Vec<String> = match command {
        "demo" => vec!["--device".into(), "cpu".into(), "--out".into(), p("demo"), "--seconds".into(), "1".into()],
        "synth" => vec!["--out".into(), p("synth"), "--count".into(), "2".into(), "--size".into(), "32".into()],
        "train" => [
            "--device",
            "cpu",
            "--data",
            &data,
            "--out",
            &p("run"),
            "--size",
            "32",
            "--width",
            "0.0625",
            "--epochs",
            "1",
            "--batch-size",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        "predict" => ["--device", "cpu", "--images", &images, "--weights", &w, "--out", &p("pred"), "--size", "32"]
            .map(String::from)
            .to_vec(),
        "eval" => ["--pred", &truth, "--truth", &truth].map(String::from).to_vec(),
        "forward" => {
            ["--device", "cpu", "--weights", &w, "--input", &input, "--output", &p("out")].map(String::from).to_vec()
        }
        "profile" => {
            ["--device", "cpu", "--size", "32", "--width", "0.0625", "--steps", "1", "--warmup", "0", "--no-layers"]
                .map(String::from)
                .to_vec()
        }
        _ => vec![],
    };
    std::iter::once(command.to_string()).chain(args).collect()
}

/// `args` with `flag`'s value set to `value` (replaced if present, else added).
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

#[test]
fn every_value_of_every_flag_is_an_error_or_a_run_never_a_panic() {
    let dir = temp("fuzz");
    ok(&dir, &["synth", "--out", s(&dir.join("data")), "--count", "4", "--size", "32"]);
    let images = dir.join("images");
    fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_pixel(37, 29, image::Rgb([150, 90, 70])).save(images.join("ISIC_0000001.png")).unwrap();

    let commands = subcommands(&dir);
    for want in ["demo", "synth", "train", "predict", "eval", "forward", "profile", "info"] {
        assert!(commands.iter().any(|c| c == want), "{want} missing from {commands:?}");
    }
    let (mut case, mut runs, mut tried, mut problems) = (0, 0, Vec::new(), Vec::new());
    for command in &commands {
        for flag in value_flags(&dir, command) {
            if PATH_FLAGS.contains(&flag.as_str()) {
                continue;
            }
            tried.push(format!("{command} {flag}"));
            for value in VALUES {
                case += 1;
                let args = with(base(command, &dir, case), &flag, value);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let t = Instant::now();
                let Some(out) = lesionseg_within(&dir, &refs, Duration::from_secs(60)) else {
                    problems.push(format!("lesionseg {}: still running after 60 s (killed)", args.join(" ")));
                    continue;
                };
                let stderr = String::from_utf8_lossy(&out.stderr);
                let what = format!("lesionseg {} ({:.1} s)", args.join(" "), t.elapsed().as_secs_f64());
                let error = stderr.lines().find(|l| l.starts_with("error:"));
                let problem = match (out.status.code(), error) {
                    (Some(101), _) => Some("exit 101 (a panic)".to_string()),
                    (None, _) => Some(format!("killed by a signal ({:?})", out.status)),
                    _ if stderr.contains("panicked") => Some("a panic message".to_string()),
                    (Some(0), _) => {
                        runs += 1;
                        None
                    }
                    (Some(_), None) => Some("failed without an `error:` line".to_string()),
                    (Some(_), Some(e)) if !e.contains(flag.as_str()) => {
                        Some(format!("the error does not name {flag}: {e}"))
                    }
                    _ => None,
                };
                if let Some(p) = problem {
                    problems.push(format!("{what}: {p}\n{}", stderr.lines().take(3).collect::<Vec<_>>().join("\n")));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} of {case} cases went wrong:\n{}", problems.len(), problems.join("\n"));
    println!("{} flags x {} values ({runs} ran): {}", tried.len(), VALUES.len(), tried.join(", "));
    for want in ["train --time-limit", "train --lr", "predict --size", "profile --steps", "profile --peak-gflops"] {
        assert!(tried.iter().any(|t| t == want), "{want} not fuzzed: {tried:?}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Every numeric flag states its range in `--help`.
#[test]
fn numeric_flags_state_their_range_in_help() {
    let dir = temp("help");
    for command in subcommands(&dir) {
        let help = String::from_utf8_lossy(&lesionseg_in(&dir, &[&command, "--help"]).stdout).to_string();
        for flag in value_flags(&dir, &command) {
            if PATH_FLAGS.contains(&flag.as_str()) || flag == "--device" || flag == "--precision" {
                continue;
            }
            let options = help.split("Options:").nth(1).unwrap();
            let entry = options.split(&format!("{flag} <")).nth(1).unwrap().split("\n  -").next().unwrap();
            // An enumerated flag states its range as clap's list of possible values.
            assert!(
                entry.contains("range:") || entry.contains("[possible values:"),
                "{command} {flag}: no range in its help: {entry}"
            );
        }
    }
}

/// Exit 1 or 2 with an `error:` line, returned.
fn error(cwd: &Path, args: &[&str]) -> String {
    let out = lesionseg_in(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: {:?}\n{stderr}", out.status);
    stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{args:?}: {stderr}")).to_string()
}

/// The messages that named the wrong thing, or came late.
#[test]
fn messages_name_the_right_thing_early() {
    let dir = temp("messages");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let w = fixtures.join("narrow_weights.safetensors");
    let bytes = fs::read(fixtures.join("narrow_n1_64x96.safetensors")).unwrap();
    let trunc = dir.join("i_trunc.st");
    fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let forward = |weights: &Path, input: &Path| {
        error(&dir, &["forward", "--device", "cpu", "--weights", s(weights), "--input", s(input), "--output", "o"])
    };
    let err = forward(&w, &trunc);
    assert!(err.contains("i_trunc.st") && !err.contains("weights"), "a bad input is not a weights error: {err}");
    let err = forward(&dir, &fixtures.join("narrow_n1_64x96.safetensors"));
    assert!(err.contains("folder") && !err.contains("no such file"), "{err}");

    ok(&dir, &["synth", "--out", s(&dir.join("data")), "--count", "2", "--size", "32"]);
    let truth = dir.join("data/ISIC2018_Task2_Training_GroundTruth_v3");
    let err = error(&dir, &["eval", "--pred", s(&truth), "--truth", s(&truth)]);
    assert!(err.contains("same folder"), "{err}");

    let t = Instant::now();
    let err = error(&dir, &["demo", "--device", "cpu", "--out", s(&dir.join("demo")), "--seconds", "0"]);
    assert!(err.contains("--seconds") && t.elapsed() < Duration::from_secs(5), "{err}");
    assert!(!dir.join("demo").exists(), "demo --seconds 0 did work before failing");
    let profile = ["profile", "--device", "cpu", "--size", "32", "--width", "0.0625", "--no-layers"];
    let err = error(&dir, &[&profile[..], &["--steps", "0"]].concat());
    assert!(err.contains("--steps"), "{err}");
    for v in ["0", "-5", "NaN"] {
        let err = error(&dir, &[&profile[..], &["--peak-gflops", v]].concat());
        assert!(err.contains("--peak-gflops"), "{err}");
    }
    let _ = fs::remove_dir_all(&dir);
}

//! Data-parallel training (`train --replicas N`) against one replica on the same
//! global batch: the same loss and summed gradients at the first step, the same
//! losses and weights after three; on the CPU backend (2 and 3 replicas) and on the
//! emulator (2). A rank that dies or hangs stops the others with a clear error
//! within the timeout.
//!
//! The tolerances are the issue's; different summation orders could move a ReLU or
//! max-pool switch point, so the seed is screened (as the golden script screens its
//! inputs): seed 3 keeps every one away from a tie at these sizes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::cuda::Kernels;
use lesionseg::backend::emu::Emu;
use lesionseg::backend::Backend;
use lesionseg::model::ParamTable;
use lesionseg::train::{self, checkpoint, StepObserver, TrainOptions};
use lesionseg::Error;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lesionseg-replicas-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 30 synthetic images: 24 training images, four global batches of 6.
fn data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    lesionseg::data::synth::synthesize(&data, 30, 64, 11).unwrap();
    data
}

fn options(data: &Path, out: &Path, replicas: usize) -> TrainOptions {
    let mut o = TrainOptions::new(data.to_path_buf(), out.to_path_buf());
    o.epochs = 1;
    o.batch_size = Some(6);
    o.size = Some(32);
    o.width = Some(1.0 / 16.0);
    o.seed = Some(3);
    o.quiet = true;
    o.max_steps = Some(3);
    o.replicas = replicas;
    o
}

/// What rank 0 saw at each step: the loss and, at step 1, the summed gradient; and
/// whether every rank saw the same bits.
#[derive(Default)]
struct Seen {
    losses: Vec<f64>,
    grads: Vec<f32>,
    /// (step, rank, loss bits, gradient checksum bits)
    all: Vec<(u64, usize, u64, u64)>,
}

fn observer(seen: &Arc<Mutex<Seen>>) -> StepObserver {
    let seen = seen.clone();
    StepObserver {
        grads: true,
        f: Arc::new(move |r| {
            let g = r.grads.expect("gradients asked for");
            let sum: f64 = g.iter().map(|&v| v as f64).sum();
            let mut s = seen.lock().unwrap();
            s.all.push((r.step, r.rank, r.loss.loss.to_bits(), sum.to_bits()));
            if r.rank == 0 {
                s.losses.push(r.loss.loss);
                if r.step == 1 {
                    s.grads = g.to_vec();
                }
            }
            Ok(())
        }),
    }
}

/// Trains 3 steps with `replicas` on backends from `open`; what rank 0 saw, and the
/// weights saved at the end.
fn train_with<B: Backend>(
    open: impl Fn(usize) -> lesionseg::Result<B> + Sync,
    data: &Path,
    out: &Path,
    replicas: usize,
) -> (Seen, Vec<f32>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut o = options(data, out, replicas);
    o.observer = Some(observer(&seen));
    let summary = train::run_replicas(open, &o).unwrap_or_else(|e| panic!("{replicas} replicas: {e}"));
    assert_eq!(summary.state.step, 3);
    let params = checkpoint::load(&out.join(train::LAST)).unwrap().params;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Every rank saw the same loss and the same summed gradient, bit for bit.
    for step in 1..=3 {
        let at: Vec<_> = seen.all.iter().filter(|a| a.0 == step).collect();
        assert_eq!(at.len(), replicas, "step {step}: one report per rank");
        assert!(at.iter().all(|a| (a.2, a.3) == (at[0].2, at[0].3)), "step {step}: ranks disagree: {at:?}");
    }
    (seen, params)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        n += (y as f64).powi(2);
    }
    if n == 0.0 {
        if d == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (d / n).sqrt()
    }
}

/// The worst relative L2 error over the parameter tensors, and its tensor.
fn worst(table: &ParamTable, a: &[f32], b: &[f32]) -> (f64, String) {
    let mut w = (0.0, String::new());
    for spec in table.specs() {
        let r = rel_l2(&a[spec.off..spec.off + spec.len()], &b[spec.off..spec.off + spec.len()]);
        assert!(!r.is_nan(), "{}", spec.name);
        if r > w.0 {
            w = (r, spec.name.clone());
        }
    }
    w
}

fn compare(name: &str, one: &(Seen, Vec<f32>), many: &(Seen, Vec<f32>)) {
    let cfg = lesionseg::model::UNetConfig::scaled(1.0 / 16.0).unwrap();
    let table = ParamTable::new(&cfg);
    let (a, b) = (&many.0, &one.0);
    let first = ((a.losses[0] - b.losses[0]) / b.losses[0]).abs();
    let (grad, grad_at) = worst(&table, &a.grads, &b.grads);
    let later = a.losses.iter().zip(&b.losses).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max);
    let (weights, weights_at) = worst(&table, &many.1, &one.1);
    println!(
        "{name}: first loss {:.3e} rel, worst gradient {grad:.3e} ({grad_at}), losses over 3 steps {later:.3e}, \
         worst weights {weights:.3e} ({weights_at})",
        first
    );
    assert!(first <= 1e-6, "{name}: first-step loss {} vs {}", a.losses[0], b.losses[0]);
    assert!(grad <= 1e-5, "{name}: summed gradient of {grad_at} off by {grad:.3e}");
    assert!(later <= 1e-4, "{name}: losses {:?} vs {:?}", a.losses, b.losses);
    assert!(weights <= 1e-4, "{name}: weights of {weights_at} off by {weights:.3e}");
}

#[test]
fn replicas_on_the_cpu_train_the_single_replica_objective() {
    let dir = temp("cpu");
    let data = data(&dir);
    let one = train_with(|_| Ok(Cpu), &data, &dir.join("r1"), 1);
    for n in [2, 3] {
        let many = train_with(|_| Ok(Cpu), &data, &dir.join(format!("r{n}")), n);
        compare(&format!("cpu, {n} replicas"), &one, &many);
        if n == 2 {
            // The same N again repeats the run bit for bit (the fixed-order sums).
            let again = train_with(|_| Ok(Cpu), &data, &dir.join("r2-again"), 2);
            let sorted = |s: &Seen| {
                let mut all = s.all.clone();
                all.sort_unstable(); // ranks report in any order
                all
            };
            assert_eq!(sorted(&again.0), sorted(&many.0), "2 replicas twice: losses or gradients differ");
            let bits = |p: &[f32]| p.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&again.1) == bits(&many.1), "2 replicas twice: weights differ");
        }
    }
    // A resumed run may use another number of replicas: the order is the step's.
    let mut more = options(&data, &dir.join("r2"), 3);
    more.resume = true;
    more.max_steps = Some(1);
    let s = train::run_replicas(|_| Ok(Cpu), &more).unwrap();
    assert_eq!(s.state.step, 4);
}

#[test]
fn replicas_on_the_emulator_train_the_single_replica_objective() {
    let dir = temp("emu");
    let data = data(&dir);
    let emu = |_| Ok(Kernels::new(Emu::new()));
    let one = train_with(emu, &data, &dir.join("r1"), 1);
    let two = train_with(emu, &data, &dir.join("r2"), 2);
    compare("emu, 2 replicas", &one, &two);
}

#[test]
fn a_global_batch_that_does_not_divide_is_an_argument_error() {
    let dir = temp("divide");
    let data = data(&dir);
    let mut o = options(&data, &dir.join("r"), 4);
    o.batch_size = Some(6);
    let e = train::run_replicas(|_| Ok(Cpu), &o).unwrap_err();
    assert!(matches!(&e, Error::Argument { arg, .. } if arg == "--replicas"), "{e}");
    assert!(e.to_string().contains("multiple of 4"), "{e}");
}

/// Rank 2 of 3 dies at its second step (a panic, as close to a killed thread as a
/// process can watch): ranks 0 and 1 return at once, naming it; the run reports it.
#[test]
fn a_dead_rank_stops_the_others_with_a_clear_error() {
    let dir = temp("dead");
    let data = data(&dir);
    let mut o = options(&data, &dir.join("r"), 3);
    o.replica_timeout = Duration::from_secs(20);
    o.observer = Some(StepObserver {
        grads: false,
        f: Arc::new(|r| {
            if r.rank == 2 && r.step == 2 {
                panic!("rank 2 killed by the test");
            }
            Ok(())
        }),
    });
    let t = Instant::now();
    let e = train::run_replicas(|_| Ok(Cpu), &o).unwrap_err().to_string();
    assert!(e.contains("replica 2") && e.contains("panicked"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
}

/// Rank 1 of 3 hangs (never arrives at the next collective within the timeout):
/// the others report it by rank after `replica_timeout`, not a hang.
#[test]
fn a_rank_that_never_arrives_is_reported_after_the_timeout() {
    let dir = temp("hang");
    let data = data(&dir);
    let mut o = options(&data, &dir.join("r"), 3);
    o.replica_timeout = Duration::from_millis(1500);
    o.observer = Some(StepObserver {
        grads: false,
        f: Arc::new(|r| {
            if r.rank == 1 && r.step == 1 {
                std::thread::sleep(Duration::from_secs(4));
            }
            Ok(())
        }),
    });
    let e = train::run_replicas(|_| Ok(Cpu), &o).unwrap_err().to_string();
    assert!(e.contains("rank(s) 1 of 3 did not arrive within 2 s"), "{e}");
}

/// `train --device cuda --replicas 2` without NCCL is one clear error (no panic),
/// and a single-replica `--device cuda` run never even looks for NCCL: the dynamic
/// loader's own log (LD_DEBUG) shows every library the process tries to open.
#[test]
fn cuda_replicas_need_nccl_and_one_replica_never_loads_it() {
    use std::process::Command;
    let dir = temp("cli");
    let data = data(&dir);
    let base = |out: &str| -> Vec<String> {
        let d = data.to_str().unwrap().to_string();
        let o = dir.join(out).to_str().unwrap().to_string();
        ["train", "--device", "cuda", "--data", &d, "--out", &o, "--size", "32", "--width", "0.0625", "--epochs", "1"]
            .map(String::from)
            .to_vec()
    };
    let run = |args: &[String], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lesionseg")).args(args).envs(env.iter().copied()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let errors =
        |stderr: &str| stderr.lines().filter(|l| l.starts_with("error:")).map(String::from).collect::<Vec<_>>();

    let two = [base("a"), ["--batch-size", "2", "--replicas", "2"].map(String::from).to_vec()].concat();
    let (code, stderr) = run(&two, &[("LESIONSEG_NCCL", "/nonexistent/libnccl.so.2")]);
    let e = errors(&stderr);
    assert_eq!((code, e.len()), (Some(1), 1), "{stderr}");
    assert!(e[0].contains("--replicas 2 needs NCCL") && e[0].contains("LESIONSEG_NCCL"), "{}", e[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The loader's log: replicas look for libnccl.so.2; one replica does not.
    let (_, traced) = run(&two, &[("LD_DEBUG", "libs,files")]);
    assert!(traced.contains("libnccl.so.2"), "--replicas 2 looked for NCCL: {}", &traced[..traced.len().min(2000)]);
    let one = [base("b"), ["--batch-size", "2"].map(String::from).to_vec()].concat();
    let (code, traced) = run(&one, &[("LD_DEBUG", "libs,files")]);
    assert_ne!(code, Some(101), "{traced}");
    assert!(traced.contains("libcuda"), "LD_DEBUG reports the loader's searches (libcuda at least)");
    assert!(!traced.contains("nccl"), "--device cuda with one replica looked for NCCL");
}

/// Starts rank `rank` of `world` as torchrun would (the launcher's environment).
fn launch(rank: usize, world: usize, port: u16, args: &[String]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_lesionseg"))
        .args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn train_args(data: &Path, out: &Path, epochs: &str) -> Vec<String> {
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    ["train", "--device", "cpu", "--data", d, "--out", o, "--size", "32", "--width", "0.0625", "--batch-size", "6"]
        .iter()
        .chain(&["--seed", "3", "--epochs", epochs, "--replica-timeout", "20"])
        .map(|s| s.to_string())
        .collect()
}

/// Three processes under the launcher's environment train what three threads
/// train (the same metrics.csv, written by rank 0 alone); then rank 2 of a long
/// run is killed (SIGKILL): ranks 0 and 1 exit non-zero at once, naming rank 2.
#[test]
fn launched_processes_train_like_threads_and_a_killed_rank_stops_the_rest() {
    let dir = temp("launch");
    let data = data(&dir);
    let port = free_port();
    let args = train_args(&data, &dir.join("procs"), "1");
    let ranks: Vec<_> = (0..3).map(|r| launch(r, 3, port, &args)).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "rank {r}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut threads = options(&data, &dir.join("threads"), 3);
    threads.max_steps = None;
    train::run_replicas(|_| Ok(Cpu), &threads).unwrap();
    let metrics = |d: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(d).join("metrics.csv")).unwrap();
        text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
    };
    assert_eq!(metrics("procs"), metrics("threads"), "processes and threads trained differently");

    let port = free_port();
    let args = train_args(&data, &dir.join("killed"), "100000");
    let mut ranks: Vec<_> = (0..3).map(|r| launch(r, 3, port, &args)).collect();
    std::thread::sleep(Duration::from_secs(3));
    ranks[2].kill().unwrap();
    let killed = Instant::now();
    for (r, child) in ranks.into_iter().enumerate().take(2) {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "rank {r}: {stderr}");
        let e = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("rank {r}: {stderr}"));
        assert!(e.contains(&format!("replica {r}")) && e.contains("2 of 3"), "rank {r}: {e}");
        println!("rank {r}, {:.2} s after the kill: {e}", killed.elapsed().as_secs_f64());
    }
    assert!(killed.elapsed() < Duration::from_secs(20), "within --replica-timeout");
}

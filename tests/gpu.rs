//! The CUDA executor on a real GPU: launches, arguments, dynamic shared memory,
//! errors (compile failures, out of memory, bad geometry), the test kernels of
//! `kernels/testing.cu`, and the whole narrow model against the CPU backend.
//!
//! Without a usable GPU every GPU test prints `SKIPPED: no usable GPU (<reason>)`
//! (and fails instead when `LESIONSEG_REQUIRE_GPU=1`, as `scripts/gpu-check.sh`
//! sets). The command-line checks at the end run everywhere.
//!
//! Kernel tests of other files use the same entry point:
//! `let Some(gpu) = lesionseg::device::test_gpu("name") else { return };`

use std::process::Command;

use lesionseg::backend::cpu::Cpu;
use lesionseg::backend::cuda::driver::{Cuda, KernelSources};
use lesionseg::backend::cuda::{embed, embedded};
use lesionseg::backend::cuda::{Arg, Executor, Geometry, Kernel, Kernels};
use lesionseg::backend::Backend;
use lesionseg::device::{test_gpu, test_gpu_with};
use lesionseg::model::{init::default_init, ParamTable, UNet16, UNetConfig, View};
use lesionseg::Error;
use rand::{Rng, SeedableRng};

/// Kernels of this file: a saxpy (pointer, float and int arguments, a tail) and a
/// copy through more than 48 KiB of dynamic shared memory.
const SMOKE: &str = r#"
#include "common.cuh"
// y[i] = a * x[i] + y[i] for i < n; one thread per element.
KERNEL(smoke_axpy_f32)(float* __restrict__ y, const float* __restrict__ x, float a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaf(a, x[i], y[i]);
}
// out = reverse(in) through dynamic shared memory of n floats; one block.
KERNEL(smoke_reverse_f32)(float* out, const float* in, int n) {
    DYN_SHARED(float, buf);
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = in[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = buf[n - 1 - i];
}
ENTRY_POINTS(smoke_axpy_f32, smoke_reverse_f32)
"#;
const BROKEN: &str = "#include \"common.cuh\"\nKERNEL(broken_f32)(float* y) { y[0] = no_such_name; }\n";

fn smoke_sources() -> KernelSources {
    KernelSources {
        modules: &[("smoke", SMOKE), ("broken", BROKEN)],
        headers: KernelSources::builtin().headers,
        entry_points: &[("smoke", "smoke_axpy_f32"), ("smoke", "smoke_reverse_f32"), ("broken", "broken_f32")],
    }
}

/// The GPU with this file's own kernels, which only NVRTC can compile: `None` after
/// saying why when there is no NVRTC (a driver-only machine, where the embedded
/// kernels' tests below are what runs).
fn smoke_gpu(test: &str) -> Option<Kernels<Cuda>> {
    // The policy first: no GPU is a skip, or a failure where one is required.
    drop(test_gpu(test)?);
    if let Err(e) = lesionseg::backend::cuda::nvrtc::nvrtc() {
        println!("{test}: SKIPPED: this test's own kernels need NVRTC ({e})");
        return None;
    }
    test_gpu_with(test, smoke_sources())
}

fn rng() -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(0x0067_7075)
}

fn upload(gpu: &Kernels<Cuda>, data: &[f32]) -> <Cuda as Executor>::Mem {
    let m = gpu.exec.alloc(data.len()).unwrap();
    gpu.exec.upload(&m, 0, data).unwrap();
    m
}

fn download(gpu: &Kernels<Cuda>, m: &<Cuda as Executor>::Mem) -> Vec<f32> {
    let mut v = vec![0.0; gpu.exec.len(m)];
    gpu.exec.download(m, 0, &mut v).unwrap();
    v
}

#[test]
fn smoke_axpy_with_a_tail() {
    let Some(gpu) = smoke_gpu("smoke_axpy_with_a_tail") else { return };
    let n = 1000;
    let mut r = rng();
    let x: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
    let y: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
    let (xd, yd) = (upload(&gpu, &x), upload(&gpu, &y));
    let geom = Geometry { grid: [(n as u32).div_ceil(128), 1, 1], block: [128, 1, 1], smem_bytes: 0 };
    let args = [Arg::Ptr(gpu.exec.addr(&yd)), Arg::Ptr(gpu.exec.addr(&xd)), Arg::F32(-0.5), Arg::I32(n as i32)];
    gpu.exec.launch(Kernel { module: "smoke", name: "smoke_axpy_f32" }, &geom, &args).unwrap();
    let got = download(&gpu, &yd);
    for i in 0..n {
        assert_eq!(got[i], (-0.5f32).mul_add(x[i], y[i]), "element {i}");
    }
    println!("smoke_axpy on {} ({}): ok", gpu.exec.name(), gpu.exec.arch());
}

#[test]
fn dynamic_shared_memory_above_48_kib() {
    let Some(gpu) = smoke_gpu("dynamic_shared_memory_above_48_kib") else { return };
    let n = 20_000; // 80 000 bytes: needs the opt-in attribute (every sm_80+ GPU allows ≥ 99 KiB)
    let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (src, dst) = (upload(&gpu, &input), gpu.exec.alloc(n).unwrap());
    let geom = Geometry { grid: [1, 1, 1], block: [256, 1, 1], smem_bytes: 4 * n as u32 };
    let args = [Arg::Ptr(gpu.exec.addr(&dst)), Arg::Ptr(gpu.exec.addr(&src)), Arg::I32(n as i32)];
    gpu.exec.launch(Kernel { module: "smoke", name: "smoke_reverse_f32" }, &geom, &args).unwrap();
    let got = download(&gpu, &dst);
    assert!(got.iter().enumerate().all(|(i, &v)| v == (n - 1 - i) as f32), "reversed copy");
    // More than any GPU allows is an error naming the kernel, not a crash.
    let too_much = Geometry { smem_bytes: 1 << 30, ..geom };
    let err = gpu.exec.launch(Kernel { module: "smoke", name: "smoke_reverse_f32" }, &too_much, &args).unwrap_err();
    assert!(err.to_string().contains("smoke_reverse_f32"), "{err}");
}

#[test]
fn errors_are_errors() {
    let Some(gpu) = smoke_gpu("errors_are_errors") else { return };
    let buf = gpu.exec.alloc(4).unwrap();
    let geom = Geometry { grid: [1, 1, 1], block: [32, 1, 1], smem_bytes: 0 };
    match gpu.exec.launch(Kernel { module: "broken", name: "broken_f32" }, &geom, &[Arg::Ptr(gpu.exec.addr(&buf))]) {
        Err(Error::Nvrtc { module, log }) => assert!(module == "broken" && log.contains("no_such_name"), "{log}"),
        other => panic!("expected an NVRTC error, got {other:?}"),
    }
    let missing = gpu.exec.launch(Kernel { module: "smoke", name: "no_such_kernel" }, &geom, &[]).unwrap_err();
    assert!(missing.to_string().contains("no_such_kernel"), "{missing}");
    let bad = Geometry { block: [2048, 1, 1], ..geom };
    assert!(gpu.exec.launch(Kernel { module: "smoke", name: "smoke_axpy_f32" }, &bad, &[]).is_err());
    let oom = gpu.exec.alloc(1 << 42).err().expect("16 TiB allocation must fail");
    let text = oom.to_string();
    assert!(text.contains("out of GPU memory") && text.contains("free"), "{text}");
    assert!(gpu.exec.upload(&buf, 2, &[1.0; 3]).is_err(), "upload past the end");
    // The context is still usable after all of that.
    gpu.exec.upload(&buf, 0, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(download(&gpu, &buf), [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn testing_cu_sgemm_and_mma() {
    let Some(gpu) = test_gpu("testing_cu_sgemm_and_mma") else { return };
    if !KernelSources::builtin().modules.iter().any(|(m, _)| *m == "testing") {
        panic!("kernels/testing.cu is not in this build");
    }
    // Odd sizes: every tile has a tail.
    let (m, n, k) = (37, 29, 53);
    let mut r = rng();
    let a: Vec<f32> = (0..m * k).map(|_| r.gen_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| r.gen_range(-1.0..1.0)).collect();
    let (ad, bd, cd) = (upload(&gpu, &a), upload(&gpu, &b), gpu.exec.alloc(m * n).unwrap());
    let geom =
        Geometry { grid: [(n as u32).div_ceil(16), (m as u32).div_ceil(16), 1], block: [16, 16, 1], smem_bytes: 0 };
    let addr = |x| Arg::Ptr(gpu.exec.addr(x));
    let args = [addr(&cd), addr(&ad), addr(&bd), Arg::I32(m as i32), Arg::I32(n as i32), Arg::I32(k as i32)];
    gpu.exec.launch(Kernel { module: "testing", name: "test_sgemm" }, &geom, &args).unwrap();
    let c = download(&gpu, &cd);
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|l| a[i * k + l] as f64 * b[l * n + j] as f64).sum();
            assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "sgemm C[{i}][{j}] = {} want {want}", c[i * n + j]);
        }
    }
    // mma.m16n8k16 with small integers: exact in bf16 and f16, exact products.
    let a: Vec<f32> = (0..16 * 16).map(|_| r.gen_range(-4..=4) as f32).collect();
    let b: Vec<f32> = (0..16 * 8).map(|_| r.gen_range(-4..=4) as f32).collect();
    let c: Vec<f32> = (0..16 * 8).map(|_| r.gen_range(-8..=8) as f32).collect();
    let want: Vec<f32> =
        (0..16 * 8).map(|e| c[e] + (0..16).map(|l| a[(e / 8) * 16 + l] * b[l * 8 + e % 8]).sum::<f32>()).collect();
    let (ad, bd, cd, dd) = (upload(&gpu, &a), upload(&gpu, &b), upload(&gpu, &c), gpu.exec.alloc(128).unwrap());
    for f16 in [0, 1] {
        let warp = Geometry { grid: [1, 1, 1], block: [32, 1, 1], smem_bytes: 0 };
        let args = [addr(&dd), addr(&ad), addr(&bd), addr(&cd), Arg::I32(f16)];
        gpu.exec.launch(Kernel { module: "testing", name: "test_mma" }, &warp, &args).unwrap();
        assert_eq!(download(&gpu, &dd), want, "mma_16816 (f16 = {f16}) fragment layout");
    }
}

/// Every kernel file this GPU can run loads from the embedded images when the build
/// embedded them: the cubin of this very architecture for sm_80/86/87/89/90, the
/// PTX (through the driver's JIT) for others; NVRTC is not involved. Files that
/// need a newer GPU are refused with the card named.
#[test]
fn embedded_kernels_load_without_nvrtc() {
    let Some(gpu) = test_gpu("embedded_kernels_load_without_nvrtc") else { return };
    if let Err(why) = embedded::MADE_BY {
        println!("embedded_kernels_load_without_nvrtc: SKIPPED: this build embeds no kernels ({why})");
        return;
    }
    let (major, minor) = gpu.exec.compute_capability();
    let arch = (major * 10 + minor) as u32;
    let sources = KernelSources::builtin();
    for (module, source) in sources.modules {
        let min = embed::min_arch(source).unwrap();
        if arch < min {
            let err = gpu.exec.module(module).err().expect("a module above this GPU must be refused").to_string();
            assert!(err.contains(&gpu.exec.name()) && err.contains(&format!("sm_{min}")), "{err}");
            println!("{module}.cu: refused as it should be: {err}");
            continue;
        }
        gpu.exec.module(module).unwrap_or_else(|e| panic!("{module}.cu did not load: {e}"));
        let path = gpu.exec.load_path(module).unwrap();
        let want = if embed::CUBIN_ARCHS.contains(&arch) {
            format!("embedded cubin sm_{arch}")
        } else {
            format!("embedded PTX compute_{min}")
        };
        assert!(path.how.starts_with(&want), "{module}.cu loaded from {path}, expected {want}");
        println!("{module}.cu: {path}");
    }
}

/// `--precision bf16` on a GPU older than the tensor-core files need is one clear
/// error naming the card and the requirement; on a new enough GPU it is accepted.
#[test]
fn bf16_needs_a_new_enough_gpu() {
    let Some(gpu) = test_gpu("bf16_needs_a_new_enough_gpu") else { return };
    let (major, minor) = gpu.exec.compute_capability();
    let (arch, name) = ((major * 10 + minor) as u32, gpu.exec.name());
    let sources = KernelSources::builtin();
    let needs = sources.modules.iter().filter(|(m, _)| *m != "testing").map(|(_, s)| embed::min_arch(s).unwrap()).max();
    let mut opened = lesionseg::device::Opened::Cuda(gpu);
    let result = opened.set_precision(lesionseg::backend::cuda::Precision::Bf16);
    match needs {
        Some(min) if arch < min => {
            let err = result.expect_err("bf16 on a GPU below its requirement").to_string();
            assert!(err.contains(&name) && err.contains(&format!("sm_{min}")), "{err}");
            println!("{err}");
        }
        _ => result.unwrap(),
    }
}

/// A dense NHWC view downloaded as is.
fn fetch<B: Backend>(be: &B, buf: &B::Buf, v: View) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    be.download(buf, v.off, &mut out).unwrap();
    out
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    if a.iter().any(|v| !v.is_finite()) {
        f64::INFINITY
    } else {
        (num / den.max(1e-30)).sqrt()
    }
}

#[test]
fn narrow_model_matches_cpu() {
    let Some(gpu) = test_gpu("narrow_model_matches_cpu") else { return };
    let cfg = UNetConfig::scaled(0.125).unwrap();
    let table = ParamTable::new(&cfg);
    let flat = default_init(&table, 7);
    let (n, h, w) = (2, 64, 96);
    let mut r = rng();
    let input: Vec<f32> = (0..n * h * w * 3).map(|_| r.gen_range(-2.0..2.0)).collect();
    let target: Vec<f32> = (0..n * h * w * cfg.classes).map(|i| ((i / 331) % 4 == 0) as u8 as f32).collect();

    fn run<B: Backend>(
        be: &B,
        cfg: UNetConfig,
        flat: &[f32],
        input: &[f32],
        target: &[f32],
        nhw: (usize, usize, usize),
    ) -> (Vec<Vec<f32>>, f64, Vec<f32>) {
        let model = UNet16::new(be, cfg, flat).unwrap();
        let ws = model.workspace(be, nhw.0, nhw.1, nhw.2).unwrap();
        be.upload(&ws.acts, ws.plan.input.off, input).unwrap();
        be.upload(&ws.target, 0, target).unwrap();
        model.forward(be, &ws).unwrap();
        let p = &ws.plan;
        let outs =
            vec![fetch(be, &ws.acts, p.mask_logits), fetch(be, &ws.acts, p.cls_mid), fetch(be, &ws.acts, p.cls_last)];
        let loss = model.backward(be, &ws, true).unwrap();
        let mut grads = vec![0.0; model.table.len];
        be.download(&model.grads, 0, &mut grads).unwrap();
        (outs, loss.loss, grads)
    }
    let (cpu_out, cpu_loss, cpu_grads) = run(&Cpu, cfg, &flat, &input, &target, (n, h, w));
    let (gpu_out, gpu_loss, gpu_grads) = run(&gpu, cfg, &flat, &input, &target, (n, h, w));
    for (name, (g, c)) in ["mask_logits", "cls_mid_logits", "cls_last_logits"].iter().zip(gpu_out.iter().zip(&cpu_out))
    {
        let e = rel_l2(g, c);
        println!("{name}: relative L2 {e:.2e}");
        assert!(e <= 1e-4, "{name}: relative L2 error {e:.3e} against the CPU");
    }
    assert!((gpu_loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0), "loss {gpu_loss} vs cpu {cpu_loss}");
    for spec in table.specs() {
        let range = spec.off..spec.off + spec.len();
        let e = rel_l2(&gpu_grads[range.clone()], &cpu_grads[range]);
        assert!(e <= 1e-4, "grad.{}: relative L2 error {e:.3e} against the CPU", spec.name);
    }
}

/// `tests/fixtures/<name>` under `LESIONSEG_ROOT` (the copied repository on a GPU
/// machine) or the source tree this was built from.
fn fixture(name: &str) -> std::path::PathBuf {
    let root = std::env::var("LESIONSEG_ROOT").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&root).join("tests/fixtures").join(name)
}

/// `lesionseg forward --device cuda` on the PyTorch goldens of the narrow model:
/// outputs max|d| ≤ 1e-4·max|ref|, losses 1e-5 relative, gradients 1e-4 relative
/// L2 (the CPU backend's tolerances in tests/model.rs).
#[test]
fn forward_command_on_cuda_matches_pytorch_goldens() {
    let Some(gpu) = test_gpu("forward_command_on_cuda_matches_pytorch_goldens") else { return };
    // The child opens the GPU itself; in exclusive-process compute mode it could not
    // while this process holds a context (run the GPU tests one at a time there).
    drop(gpu);
    for case in ["narrow_n2_64x64.safetensors", "narrow_n1_64x96.safetensors"] {
        let out_path = std::env::temp_dir().join(format!("lesionseg-gpu-{}-{case}", std::process::id()));
        let (weights, input) = (fixture("narrow_weights.safetensors"), fixture(case));
        let run = Command::new(bin())
            .args(["forward", "--device", "cuda", "--weights"])
            .arg(&weights)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out_path)
            .env("LESIONSEG_SYNC", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{case}: forward --device cuda failed: {stderr}");
        println!("{case}: {}", String::from_utf8_lossy(&run.stdout).lines().next().unwrap_or_default());
        let got = lesionseg::weights::read_plain(&out_path).unwrap();
        let want = lesionseg::weights::read_plain(&input).unwrap();
        let mut worst = Vec::new();
        for (name, w) in want.iter().filter(|(n, _)| *n != "input" && *n != "target_mask") {
            let g = got.get(name).unwrap_or_else(|| panic!("{case}: output lacks `{name}`"));
            assert_eq!(g.shape, w.shape, "{case}: shape of `{name}`");
            let (ok, err) = if name.starts_with("grad.") {
                let e = rel_l2(&g.data, &w.data);
                (e <= 1e-4, e)
            } else if name.starts_with("loss") {
                let (a, b) = (g.data[0] as f64, w.data[0] as f64);
                ((a - b).abs() <= 1e-5 * b.abs(), (a - b).abs() / b.abs())
            } else {
                let max_ref = w.data.iter().fold(0f64, |m, x| m.max((*x as f64).abs()));
                let d = g.data.iter().zip(&w.data).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
                (d <= 1e-4 * max_ref && g.data.iter().all(|v| v.is_finite()), d / max_ref)
            };
            if !ok {
                worst.push(format!("{name}: error {err:.3e}"));
            }
        }
        let _ = std::fs::remove_file(&out_path);
        assert!(worst.is_empty(), "{case}: {} tensors differ from PyTorch:\n{}", worst.len(), worst.join("\n"));
    }
}

/// The `lesionseg` binary: `LESIONSEG_BIN` (the prebuilt one on a GPU machine) or
/// the one cargo built for this test.
fn bin() -> String {
    std::env::var("LESIONSEG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lesionseg").to_string())
}

#[test]
fn info_runs_anywhere() {
    let out = Command::new(bin()).arg("info").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "info failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for part in ["driver:", "NVRTC", "ptxas", "kernel cache:", "kernels"] {
        assert!(stdout.contains(part), "info lacks `{part}`:\n{stdout}");
    }
    println!("{stdout}");
}

#[test]
fn device_cuda_without_a_gpu_is_one_error_line() {
    if Cuda::new(0).is_ok() {
        println!("a GPU is present: nothing to check");
        return;
    }
    let out = Command::new(bin()).args(["demo", "--device", "cuda"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() == 1 && lines[0].starts_with("error: --device cuda: no usable GPU"), "{stderr}");
}

#[test]
fn device_auto_says_what_it_chose() {
    let (opened, note) = lesionseg::device::open(lesionseg::device::Device::Auto).unwrap();
    let note = note.unwrap();
    match opened.name() {
        "cpu" => assert!(note.starts_with("device auto: no usable GPU (") && note.ends_with("); using cpu"), "{note}"),
        _ => assert!(note.starts_with("device auto: using cuda on "), "{note}"),
    }
}

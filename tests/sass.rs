//! Every kernel's machine code on sm_90 (H100), without a GPU: NVRTC → ptxas →
//! nvdisasm (`src/backend/cuda/sass.rs`). Prints, and writes to
//! `target/tmp/sass-mix.txt` for `scripts/test.sh`, per kernel the registers, shared
//! memory, theoretical occupancy on each GPU of the performance model, and the
//! instruction mix of its main loop. Fails if a kernel has no SASS or a tensor-core
//! kernel's main loop holds no HMMA. Without the tools it fails when `CI` is set and
//! otherwise prints `SKIPPED` (scripts/test.sh installs them into `.cache`).

use lesionseg::backend::cuda::{probe, sass};
use lesionseg::perfmodel::kernels::static_info;
use lesionseg::perfmodel::{occupancy, GPUS};

fn report(text: &str) {
    println!("{text}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sass-mix.txt"), text);
}

#[test]
fn sass_mix_of_every_kernel() {
    let missing: Vec<&str> = [
        (lesionseg::backend::cuda::nvrtc::nvrtc().is_err(), "NVRTC"),
        (probe::find_ptxas().is_none(), "ptxas"),
        (sass::find_nvdisasm().is_none(), "nvdisasm"),
    ]
    .iter()
    .filter_map(|&(m, n)| m.then_some(n))
    .collect();
    if !missing.is_empty() {
        let why = format!("{} not found (scripts/test.sh installs them into .cache)", missing.join(", "));
        assert!(std::env::var_os("CI").is_none(), "CI is set but the SASS toolchain is missing: {why}");
        report(&format!("SKIPPED (no SASS: {why})\n"));
        return;
    }
    let info = static_info("sm_90");
    let ks = lesionseg::backend::cuda::driver::KernelSources::builtin();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for &(module, kernel) in ks.entry_points {
        match info.kernels.get(kernel) {
            Some(k) => rows.push((module.to_string(), "sm_90".to_string(), k.clone())),
            None => problems.push(format!("{module}.cu: {kernel} has no SASS")),
        }
    }
    // The planted kernels of testing.cu may hold their one mma outside a loop.
    for (_, _, k) in rows.iter().filter(|(m, _, _)| m != "testing") {
        if k.whole.get("HMMA") > 0 && k.main_loop.is_none_or(|m| m.get("HMMA") == 0) {
            problems.push(format!("{}: HMMA outside any loop", k.name));
        }
    }
    let mut text = format!("{}\n{}", info.note, sass::table(&rows));
    text += "\ntheoretical occupancy (resident warps / SM maximum and the limit; sm_90 registers, __launch_bounds__ threads \
             or 256), per GPU:\n";
    text += &format!("{:<32}", "kernel");
    for g in GPUS {
        text += &format!(" {:>18}", g.key);
    }
    text += "\n";
    for (_, _, k) in &rows {
        text += &format!("{:<32}", k.name);
        // The kernel's __launch_bounds__ thread count, else 256 (the grid-stride size).
        let threads = k.max_threads.unwrap_or(256);
        for g in GPUS {
            let o = occupancy(g, threads, Some(k.stats.registers), k.stats.smem_bytes);
            text += &format!(" {:>18}", format!("{}/{} {}", o.warps, g.max_warps, o.limit));
        }
        text += "\n";
    }
    report(&text);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

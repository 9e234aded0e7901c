//! A performance model of the kernels on GPUs we may not have: per launch, a predicted
//! time from the emulator's traced counters (`crate::backend::emu::trace`), the
//! kernel's machine code (`crate::backend::cuda::sass`) and a GPU's specification
//! ([`specs`]).
//!
//! The time of a launch is the largest of six bounds, each the launch's demand on one
//! resource divided by the resource's peak:
//! - tensor: mma.m16n8k16 count × 4096 FLOPs / the dense BF16 tensor peak;
//! - fp32: FFMA × 64 + other FP32 × 32 FLOPs / the FP32 peak (instruction counts from
//!   the main loop's SASS, scaled by the traced trip count);
//! - DRAM: unique bytes read + written / DRAM bandwidth (compulsory traffic only);
//! - L2: sectors requested × 32 bytes / L2 bandwidth;
//! - smem: shared-memory wavefronts / (SMs × 1 per clock);
//! - issue: warp instructions / (SMs × 4 per clock).
//!
//! The SM-local bounds (tensor, fp32, smem, issue) are stretched by wave quantisation:
//! blocks run in waves of (blocks per SM from occupancy) × SMs, and the SMs of a
//! partial last wave hold ⌈blocks / SMs⌉ blocks each.
//!
//! What it ignores (see the README): latency (a kernel with too few warps to hide
//! it runs slower than any bound), launch overhead, overlap between launches, L1
//! hits (all sectors count at L2), DRAM traffic beyond the compulsory bytes (an
//! operand re-read after leaving L2), clock throttling, and that mma.sync on Hopper
//! reaches only part of the tensor peak that wgmma can. Constants change only from
//! measurements on a GPU (scripts/gpu-check.sh, bench/RESULTS.md).

pub mod kernels;
pub mod specs;

pub use specs::{gpu, GpuSpec, GPUS};

/// The resource that bounds a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// Tensor-core throughput.
    Tensor,
    /// FP32 (non-tensor) throughput.
    Fp32,
    /// DRAM bandwidth.
    Dram,
    /// L2 bandwidth.
    L2,
    /// Shared-memory bandwidth.
    Smem,
    /// Instruction issue.
    Issue,
}

impl Bound {
    /// Every bound, in table order.
    pub const ALL: [Bound; 6] = [Bound::Tensor, Bound::Fp32, Bound::Dram, Bound::L2, Bound::Smem, Bound::Issue];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Bound::Tensor => "tensor",
            Bound::Fp32 => "fp32",
            Bound::Dram => "DRAM",
            Bound::L2 => "L2",
            Bound::Smem => "smem",
            Bound::Issue => "issue",
        }
    }
}

/// What the model needs to know about one launch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LaunchDemand {
    /// Blocks in the grid.
    pub blocks: u64,
    /// Threads per block.
    pub threads: u32,
    /// Shared memory per block (static + dynamic), bytes.
    pub smem_bytes: u32,
    /// Registers per thread on the target (`None`: unknown, not a limit).
    pub registers: Option<u32>,
    /// Tensor-core FLOPs.
    pub tensor_flops: f64,
    /// FP32 FLOPs (`None`: unknown without the SASS).
    pub fp32_flops: Option<f64>,
    /// Warp instructions issued (`None`: unknown without the SASS).
    pub instructions: Option<f64>,
    /// Unique bytes read and written (DRAM).
    pub dram_bytes: f64,
    /// Bytes requested from L2 (sectors × 32).
    pub l2_bytes: f64,
    /// Shared-memory wavefronts.
    pub wavefronts: f64,
}

/// Occupancy: resident blocks per SM and what limits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    /// Blocks per SM (0: the block does not fit).
    pub blocks: u32,
    /// `warps`, `registers`, `smem` or `blocks`.
    pub limit: &'static str,
    /// Resident warps / the SM's maximum.
    pub warps: u32,
}

/// Shared memory the driver reserves per block on sm_80 and later.
const SMEM_RESERVED: u32 = 1024;

/// Theoretical occupancy of a block of `threads` threads using `registers` per
/// thread and `smem` bytes of shared memory on `g`.
pub fn occupancy(g: &GpuSpec, threads: u32, registers: Option<u32>, smem: u32) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let mut v: Vec<(u32, &'static str)> = vec![(g.max_blocks, "blocks"), (g.max_warps / warps, "warps")];
    if let Some(r) = registers {
        // Registers are allocated per warp in units of 256.
        let per_warp = (r * 32).div_ceil(256) * 256;
        v.push((g.regs_per_sm / (per_warp * warps).max(1), "registers"));
    }
    if smem > 0 {
        let per_block = (smem + SMEM_RESERVED).div_ceil(128) * 128;
        v.push((g.smem_per_sm / per_block, "smem"));
    }
    let (blocks, limit) = v.into_iter().min_by_key(|&(b, _)| b).unwrap_or((1, "blocks"));
    Occupancy { blocks, limit, warps: blocks * warps }
}

/// A launch's predicted time and how it was reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Predicted time, ms.
    pub ms: f64,
    /// The binding resource.
    pub bound: Bound,
    /// Each bound in ms ([`Bound::ALL`] order), wave quantisation applied.
    pub times: [f64; 6],
    /// The same without wave quantisation (each resource at its peak).
    pub ideal: [f64; 6],
    /// Occupancy.
    pub occupancy: Occupancy,
    /// Waves of resident blocks.
    pub waves: u64,
}

/// The predicted time of one launch on `g`.
pub fn predict(g: &GpuSpec, d: &LaunchDemand) -> Prediction {
    let occ = occupancy(g, d.threads, d.registers, d.smem_bytes);
    let per_wave = u64::from(occ.blocks.max(1)) * u64::from(g.sms);
    let blocks = d.blocks.max(1);
    let (full, rest) = (blocks / per_wave, blocks % per_wave);
    // Blocks the busiest SM runs, against a perfect spread over all SMs.
    let busiest = full * u64::from(occ.blocks.max(1)) + rest.div_ceil(u64::from(g.sms));
    let q = (busiest as f64 * f64::from(g.sms) / blocks as f64).max(1.0);
    let clock = g.clock_ghz * 1e9;
    let s = |x: f64| x * 1e3; // seconds → ms
    let ideal = [
        s(d.tensor_flops / (g.tensor_tflops * 1e12)),
        s(d.fp32_flops.unwrap_or(0.0) / (g.fp32_tflops * 1e12)),
        s(d.dram_bytes / (g.dram_gbs * 1e9)),
        s(d.l2_bytes / (g.l2_gbs * 1e9)),
        s(d.wavefronts / (f64::from(g.sms) * clock)),
        s(d.instructions.unwrap_or(0.0) / (f64::from(g.sms) * g.issue_per_clk * clock)),
    ];
    let sm_local = [true, true, false, false, true, true];
    let mut times = ideal;
    for (t, local) in times.iter_mut().zip(sm_local) {
        if local {
            *t *= q;
        }
    }
    let (i, &ms) = times.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap_or((0, &0.0));
    Prediction { ms, bound: Bound::ALL[i], times, ideal, occupancy: occ, waves: blocks.div_ceil(per_wave) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_limits() {
        let h = gpu("h100").unwrap();
        // 128 threads, 120 registers: 4 warps × 3840 = 15360 registers → 4 blocks
        // (shared memory would allow 11).
        let o = occupancy(h, 128, Some(120), 19456);
        assert_eq!((o.blocks, o.limit, o.warps), (4, "registers", 16), "{o:?}");
        assert_eq!(occupancy(h, 128, Some(64), 19456), Occupancy { blocks: 8, limit: "registers", warps: 32 });
        assert_eq!(occupancy(h, 128, Some(32), 40000).limit, "smem");
        assert_eq!(occupancy(h, 256, Some(32), 0), Occupancy { blocks: 8, limit: "warps", warps: 64 });
        assert_eq!(occupancy(h, 128, Some(255), 0).limit, "registers");
        let l4 = gpu("l4").unwrap();
        assert_eq!(occupancy(l4, 128, Some(120), 19456).blocks, 4);
    }

    #[test]
    fn the_largest_bound_wins_and_waves_quantise() {
        let h = gpu("h100").unwrap();
        // 4 blocks per SM (registers): three full waves.
        let d = LaunchDemand {
            blocks: 132 * 4 * 3,
            threads: 128,
            smem_bytes: 19456,
            registers: Some(120),
            tensor_flops: 989.4e12 * 1e-3, // 1 ms at the peak
            dram_bytes: 3.35e12 * 0.5e-3,  // 0.5 ms
            ..Default::default()
        };
        let p = predict(h, &d);
        assert_eq!(p.bound, Bound::Tensor);
        assert!((p.ms - 1.0).abs() < 1e-9, "{p:?}");
        // One block more: a second wave with one block on one SM.
        assert_eq!((p.waves, p.occupancy.blocks), (3, 4));
        let p2 = predict(h, &LaunchDemand { blocks: 132 * 4 * 3 + 1, ..d.clone() });
        assert!(p2.ms > 1.0 && p2.waves == 4, "{p2:?}");
        // Four blocks: each SM-local bound stretched by 132/4; DRAM is not.
        let p3 = predict(h, &LaunchDemand { blocks: 4, ..d });
        assert!((p3.times[0] - 33.0).abs() < 1e-9 && (p3.times[2] - 0.5).abs() < 1e-9, "{p3:?}");
    }

    #[test]
    fn every_gpu_has_its_figures() {
        for g in GPUS {
            assert!(g.sms > 0 && g.tensor_tflops > g.fp32_tflops && g.l2_gbs > g.dram_gbs, "{}", g.key);
            // Dense BF16 FLOP per SM per clock: 1024 on Ada (L4), 2048 on Ampere
            // (A100, Orin), about 4096 on Hopper: a typo in a figure shows here.
            let per_sm_clk = g.tensor_tflops * 1e12 / (f64::from(g.sms) * g.clock_ghz * 1e9);
            assert!((1000.0..=4200.0).contains(&per_sm_clk), "{}: {per_sm_clk}", g.key);
        }
        assert_eq!(specs::gpu_for_device("NVIDIA H100 80GB HBM3").unwrap().key, "h100");
        assert_eq!(specs::gpu_for_device("NVIDIA L4").unwrap().key, "l4");
        assert!(specs::gpu_for_device("NVIDIA L40S").is_none());
    }
}

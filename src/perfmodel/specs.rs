//! The GPUs the performance model knows, one row each, every number with its source.
//!
//! Sources, cited by key below:
//! - [H100-DS] NVIDIA H100 Tensor Core GPU datasheet (SXM5 column; tensor figures
//!   "with sparsity" halved for dense).
//! - [H100-WP] NVIDIA H100 Tensor Core GPU Architecture whitepaper (132 SMs on SXM5,
//!   max boost 1980 MHz, 50 MB L2, 228 KB shared memory per SM).
//! - [A100-WP] NVIDIA A100 Tensor Core GPU Architecture whitepaper (108 SMs, boost
//!   1410 MHz, 40 MB L2, L2 read bandwidth 5120 bytes/clk, 164 KB shared memory per
//!   SM; 312 TFLOPS dense BF16, 19.5 TFLOPS FP32) and the A100 80GB datasheet (2,039
//!   GB/s HBM2e on SXM).
//! - [L4-DS] NVIDIA L4 Tensor Core GPU datasheet (FP32 30.3 TFLOPS, BF16 242.5
//!   TFLOPS with sparsity, 300 GB/s GDDR6), with its 58 SMs, 2040 MHz boost and 48 MB
//!   L2 from the Ada (AD104) configuration NVIDIA lists for the L4.
//! - [ORIN-DS] NVIDIA Jetson AGX Orin series datasheet (64GB: 2048 CUDA cores in 16
//!   SMs, GPU max 1.3 GHz, 170 sparse INT8 TOPS from the GPU, 204.8 GB/s LPDDR5, 4 MB
//!   L2); dense BF16 = 170 / 2 (sparsity) / 2 (INT8 → 16-bit) = 42.5 TFLOPS; FP32 =
//!   2048 lanes × 2 × 1.3 GHz.
//! - [CUDA-CC] CUDA C++ Programming Guide, "Technical Specifications per Compute
//!   Capability": registers (64 K per SM), resident warps (64 on 8.0/9.0, 48 on
//!   8.7/8.9), resident blocks (32 on 8.0/9.0, 16 on 8.7, 24 on 8.9), shared memory
//!   per SM and per block; shared memory has 32 banks of 4 bytes (128 bytes per clock
//!   per SM); 4 warp schedulers per SM issue one instruction per clock each.
//! - [L2-SCALED] not published for this GPU: A100's 5120 bytes/clk for 108 SMs
//!   [A100-WP], scaled by SM count and clock. An estimate until calibrated
//!   (bench/RESULTS.md).

/// One GPU's specification.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuSpec {
    /// The `--predict` key.
    pub key: &'static str,
    /// The product.
    pub name: &'static str,
    /// The architecture its kernels are compiled for (`sm_90`).
    pub arch: &'static str,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Boost clock, GHz.
    pub clock_ghz: f64,
    /// Dense BF16 tensor-core peak (f32 accumulate), TFLOP/s.
    pub tensor_tflops: f64,
    /// FP32 (non-tensor) peak, TFLOP/s.
    pub fp32_tflops: f64,
    /// DRAM bandwidth, GB/s.
    pub dram_gbs: f64,
    /// L2 bandwidth, GB/s.
    pub l2_gbs: f64,
    /// L2 capacity, bytes.
    pub l2_bytes: u64,
    /// Shared-memory bandwidth per SM, bytes per clock (32 banks × 4 bytes).
    pub smem_bytes_per_clk: f64,
    /// Warp instructions issued per clock per SM.
    pub issue_per_clk: f64,
    /// 32-bit registers per SM.
    pub regs_per_sm: u32,
    /// Shared memory per SM available to blocks, bytes.
    pub smem_per_sm: u32,
    /// Resident warps per SM at most.
    pub max_warps: u32,
    /// Resident blocks per SM at most.
    pub max_blocks: u32,
    /// Where each figure comes from.
    pub sources: &'static str,
}

/// A100 L2 bytes per clock per SM [A100-WP], for [L2-SCALED].
const L2_BYTES_PER_CLK_PER_SM: f64 = 5120.0 / 108.0;

/// The GPUs `--predict` accepts.
pub const GPUS: &[GpuSpec] = &[
    GpuSpec {
        key: "h100",
        name: "H100 SXM5 80GB",
        arch: "sm_90",
        sms: 132,
        clock_ghz: 1.98,
        tensor_tflops: 989.4,
        fp32_tflops: 66.9,
        dram_gbs: 3350.0,
        l2_gbs: L2_BYTES_PER_CLK_PER_SM * 132.0 * 1.98,
        l2_bytes: 50 << 20,
        smem_bytes_per_clk: 128.0,
        issue_per_clk: 4.0,
        regs_per_sm: 65536,
        smem_per_sm: 228 << 10,
        max_warps: 64,
        max_blocks: 32,
        sources: "SMs, clock, L2 size, smem/SM [H100-WP]; tensor, FP32, DRAM [H100-DS]; L2 bandwidth [L2-SCALED]; \
                  registers, warps, blocks, banks, issue [CUDA-CC] (9.0)",
    },
    GpuSpec {
        key: "a100",
        name: "A100 SXM4 80GB",
        arch: "sm_80",
        sms: 108,
        clock_ghz: 1.41,
        tensor_tflops: 312.0,
        fp32_tflops: 19.5,
        dram_gbs: 2039.0,
        l2_gbs: 5120.0 * 1.41,
        l2_bytes: 40 << 20,
        smem_bytes_per_clk: 128.0,
        issue_per_clk: 4.0,
        regs_per_sm: 65536,
        smem_per_sm: 164 << 10,
        max_warps: 64,
        max_blocks: 32,
        sources:
            "SMs, clock, tensor, FP32, L2 size and bandwidth, smem/SM [A100-WP]; DRAM [A100-WP] (80GB datasheet); \
                  registers, warps, blocks, banks, issue [CUDA-CC] (8.0)",
    },
    GpuSpec {
        key: "l4",
        name: "L4",
        arch: "sm_89",
        sms: 58,
        clock_ghz: 2.04,
        tensor_tflops: 121.0,
        fp32_tflops: 30.3,
        dram_gbs: 300.0,
        l2_gbs: L2_BYTES_PER_CLK_PER_SM * 58.0 * 2.04,
        l2_bytes: 48 << 20,
        smem_bytes_per_clk: 128.0,
        issue_per_clk: 4.0,
        regs_per_sm: 65536,
        smem_per_sm: 100 << 10,
        max_warps: 48,
        max_blocks: 24,
        sources: "tensor, FP32, DRAM, SMs, clock, L2 size [L4-DS]; L2 bandwidth [L2-SCALED]; smem/SM, registers, \
                  warps, blocks, banks, issue [CUDA-CC] (8.9)",
    },
    GpuSpec {
        key: "orin",
        name: "Jetson AGX Orin 64GB",
        arch: "sm_87",
        sms: 16,
        clock_ghz: 1.3,
        tensor_tflops: 42.5,
        fp32_tflops: 5.32,
        dram_gbs: 204.8,
        l2_gbs: L2_BYTES_PER_CLK_PER_SM * 16.0 * 1.3,
        l2_bytes: 4 << 20,
        smem_bytes_per_clk: 128.0,
        issue_per_clk: 4.0,
        regs_per_sm: 65536,
        smem_per_sm: 164 << 10,
        max_warps: 48,
        max_blocks: 16,
        sources:
            "SMs, clock, tensor (from sparse INT8 TOPS), FP32 (from cores), DRAM, L2 size [ORIN-DS]; L2 bandwidth \
                  [L2-SCALED]; smem/SM, registers, warps, blocks, banks, issue [CUDA-CC] (8.7)",
    },
];

/// The specification for a `--predict` key (`h100`, `a100`, `l4`, `orin`).
pub fn gpu(key: &str) -> Option<&'static GpuSpec> {
    GPUS.iter().find(|g| g.key.eq_ignore_ascii_case(key))
}

/// The specification of a GPU the driver names (`NVIDIA H100 80GB HBM3`), for
/// calibration on a lent GPU.
pub fn gpu_for_device(name: &str) -> Option<&'static GpuSpec> {
    let n = name.to_ascii_uppercase();
    [("H100", "h100"), ("A100", "a100"), ("L4", "l4"), ("ORIN", "orin")]
        .iter()
        .find(|(part, _)| n.contains(part) && !(*part == "L4" && n.contains("L40")))
        .and_then(|(_, k)| gpu(k))
}

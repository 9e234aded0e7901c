//! Backends that run the hand-written kernels in `kernels/`: the launch logic
//! (shape checks, geometry, arguments) is written once here, over an
//! [`Executor`] that either drives a GPU (`driver`: cudarc, with the kernels embedded
//! at build time or compiled by NVRTC) or runs the same kernel sources compiled for
//! the host (`crate::backend::emu`). So the
//! emulator checks exactly the grid, block and shared-memory sizes the GPU runs.
//!
//! One file per op family, named as its kernel files: `conv2d.rs` ↔
//! `kernels/conv2d.cu` (f32 products) and `kernels/conv2d_mma.cu` (bf16 products on
//! tensor cores, a module of its own because it needs sm_80) ↔ `backend/cpu/conv2d.rs`
//! (the reference) ↔ `tests/conv2d.rs` (the reference's tests) and
//! `tests/conv2d_kernels.rs` / `tests/conv2d_mma_kernels.rs` (the kernels against it);
//! likewise `deconv`, and `adam`, `layout`, `loss`, `pool` with f32 kernels only. The
//! GEMM kernels share the tile engine of `kernels/tile.cuh` and their op's loaders
//! (`kernels/conv2d.cuh`, `kernels/deconv.cuh`). Kernel names say what is stored:
//! `conv2d_fwd_f32` reads and writes f32, `conv2d_fwd_f32_mma` too, multiplying in
//! bf16 on tensor cores.

pub mod adam;
pub(crate) mod backward;
pub mod conv2d;
pub mod deconv;
pub mod driver;
pub mod embed;
pub mod embedded;
pub mod gpu;
pub mod layout;
pub mod loader;
pub mod locate;
pub mod loss;
pub mod nvrtc;
pub mod nvrtc_lib;
pub mod pool;
pub mod probe;
pub mod ptxas;
pub mod sass;
pub mod scratch;
pub mod sources;

use super::{
    AdamParams, At, Backend, Conv2dParams, DeconvParams, GlobalPoolParams, GradIn, LossParams, LossSums, MaskCoefs,
    MaxPoolParams,
};
use crate::backend::memory::MemoryStats;
use crate::error::{Error, Result};
use scratch::Scratch;

/// A kernel entry point: its source file (without `.cu`) and `extern "C"` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// Source file under `kernels/`, e.g. `conv2d`.
    pub module: &'static str,
    /// Entry point, `<op>_<variant>_<dtype>`, e.g. `conv2d_fwd_f32`.
    pub name: &'static str,
}

/// Launch geometry, computed once per launch by the op's launcher and used as is
/// by every executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub smem_bytes: u32,
}

/// One kernel argument, passed by value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address (element 0 of an operand).
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `float`.
    F32(f32),
}

/// Memory and launches on one device (a GPU, or the host emulator).
pub trait Executor {
    /// A device buffer of f32.
    type Mem;
    /// Short name (`cuda`, `emu`).
    fn name(&self) -> &'static str;
    /// The name and the hardware ([`Backend::describe`]).
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// [`Backend::device_memory_in_use`].
    fn device_memory_in_use(&self) -> Option<u64> {
        None
    }
    /// What this executor has allocated ([`Backend::memory_stats`]).
    fn memory_stats(&self) -> Option<MemoryStats> {
        None
    }
    /// Starts a new peak ([`Backend::reset_peak_memory`]).
    fn reset_peak_memory(&self) {}
    /// A zero-filled buffer of `len` f32.
    fn alloc(&self, len: usize) -> Result<Self::Mem>;
    /// A buffer of `len` f32 for an op's workspace, its contents undefined (not
    /// zeroed: the op writes what it reads).
    fn alloc_scratch(&self, len: usize) -> Result<Self::Mem> {
        self.alloc(len)
    }
    /// Called each time a workspace is handed to an op that plans to use its first
    /// `len` elements; the emulator fills it with NaN, so that a kernel reading an
    /// element no kernel of the op wrote fails its test.
    fn fresh_scratch(&self, _mem: &Self::Mem, _len: usize) -> Result<()> {
        Ok(())
    }
    /// Elements in `mem`.
    fn len(&self, mem: &Self::Mem) -> usize;
    /// Device address of element 0 of `mem`.
    fn addr(&self, mem: &Self::Mem) -> u64;
    /// Host → device at element `off`.
    fn upload(&self, mem: &Self::Mem, off: usize, src: &[f32]) -> Result<()>;
    /// Device → host from element `off`.
    fn download(&self, mem: &Self::Mem, off: usize, dst: &mut [f32]) -> Result<()>;
    /// `Backend::device_place`: the device address of element `off` and the raw
    /// stream, where memory is a GPU's.
    fn device_place(&self, _mem: &Self::Mem, _off: usize) -> Result<Option<(u64, u64)>> {
        Ok(None)
    }
    /// Runs `kernel` with `args` (waits for completion where the executor checks
    /// each launch, as in tests and debug builds).
    fn launch(&self, kernel: Kernel, geom: &Geometry, args: &[Arg]) -> Result<()>;
    /// A point in the queue of launches ([`Backend::Mark`]).
    type Mark;
    /// Marks where the launches given so far end.
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds from `start` to `end`; waits for `end`.
    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64>;
}

/// The arithmetic of the convolution and deconvolution GEMMs (forward, input and
/// weight gradients) on the kernel backend; everything else is f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 products and sums, as the CPU reference (within 1e-5).
    #[default]
    F32,
    /// bf16 products with f32 sums on tensor cores (the `*_f32_mma` kernels of
    /// `conv2d_mma.cu` and `deconv_mma.cu`; f32 in memory) in every convolution and
    /// deconvolution GEMM, forward and backward: within 1e-2 of the reference. Bias
    /// gradients, masks, pools, the loss and Adam stay f32.
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::argument("--precision", format!("`{other}` is not f32 or bf16"))),
        }
    }
}

/// The kernel backend over executor `E`.
pub struct Kernels<E: Executor> {
    /// The executor.
    pub exec: E,
    /// Arithmetic of the convolution and deconvolution GEMMs.
    pub precision: Precision,
    /// The ops' workspace, reused from call to call (see `scratch.rs`).
    scratch: Scratch<E::Mem>,
}

impl<E: Executor> Kernels<E> {
    /// The kernels on `exec`, f32 throughout.
    pub fn new(exec: E) -> Self {
        Kernels { exec, precision: Precision::F32, scratch: Scratch::default() }
    }
}

/// One operand of a launch: name (for messages), place, extent, whether it is written.
pub(crate) struct Operand<'a, E: Executor> {
    pub(crate) name: &'static str,
    pub(crate) at: At<'a, Kernels<E>>,
    pub(crate) len: usize,
    pub(crate) write: bool,
}

/// An operand checked against its buffer: its device address.
fn operand<E: Executor>(exec: &E, op: &str, o: &Operand<'_, E>) -> Result<u64> {
    let (size, off, len) = (exec.len(o.at.buf), o.at.off, o.len);
    if off.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::shape(
            format!("{op} operand {}", o.name),
            format!("{len} elements at offset {off} inside a buffer of {size}"),
            "an operand past the end of its buffer",
        ));
    }
    Ok(exec.addr(o.at.buf) + 4 * off as u64)
}

/// The device addresses of `ops`, in order, after checking each against its buffer
/// and that no written operand overlaps another (the `Backend` contract: an error,
/// never a race).
pub(crate) fn addresses<E: Executor>(exec: &E, op: &str, ops: &[Operand<'_, E>]) -> Result<Vec<u64>> {
    let addrs = ops.iter().map(|o| operand(exec, op, o)).collect::<Result<Vec<u64>>>()?;
    for (i, a) in ops.iter().enumerate() {
        for (j, b) in ops.iter().enumerate().skip(i + 1) {
            let (sa, sb) = (addrs[i], addrs[j]);
            let overlap = a.len > 0 && b.len > 0 && sa < sb + 4 * b.len as u64 && sb < sa + 4 * a.len as u64;
            if overlap && (a.write || b.write) {
                return Err(Error::shape(
                    op,
                    format!("operands {} and {} in disjoint memory", a.name, b.name),
                    "overlapping operands",
                ));
            }
        }
    }
    Ok(addrs)
}

/// `v` as an `int` kernel argument, or a shape error if it does not fit.
pub(crate) fn int(op: &str, v: usize) -> Result<Arg> {
    i32::try_from(v).map(Arg::I32).map_err(|_| Error::shape(op, "sizes below 2^31", v))
}

/// Blocks of `per_block` covering `total` items.
pub(crate) fn blocks(total: usize, per_block: usize) -> u32 {
    total.div_ceil(per_block).max(1) as u32
}

/// Threads per block of the grid-stride (elementwise) kernels.
const STRIDE_THREADS: usize = 256;
/// Blocks of a grid-stride launch at most: keeps `e + gridDim.x·blockDim.x` in the
/// kernels below 2^31 for every extent [`fits`] accepts.
const MAX_STRIDE_BLOCKS: usize = 1 << 16;
/// The largest extent the kernels index with `int`, leaving room for a grid stride.
pub(crate) const MAX_EXTENT: usize = i32::MAX as usize - MAX_STRIDE_BLOCKS * STRIDE_THREADS;

/// `len` (None: it overflowed), or an error naming `what` if the kernels cannot
/// index that many elements with `int`.
pub(crate) fn fits(op: &str, what: &str, len: Option<usize>) -> Result<usize> {
    match len {
        Some(l) if l <= MAX_EXTENT => Ok(l),
        _ => Err(Error::shape(
            op,
            format!("{what} of at most {MAX_EXTENT} elements"),
            len.map_or("more".into(), |l| l.to_string()),
        )),
    }
}

/// Elements spanned by an activation view of `pixels` pixels of `c` channels `pitch`
/// apart: an error if the pitch is below the channel count or the extent exceeds
/// what the kernels can index.
pub(crate) fn act_len(op: &str, pixels: usize, c: usize, pitch: usize) -> Result<usize> {
    if pitch < c {
        return Err(Error::shape(op, format!("pixel pitch >= {c} channels"), format!("pitch {pitch}")));
    }
    fits(op, "operands", Some(super::view_len(pixels, c, pitch)))
}

/// A 1-D grid-stride geometry over `total` items, 256 threads a block.
pub(crate) fn stride_geometry(total: usize) -> Geometry {
    let grid = blocks(total, STRIDE_THREADS).min(MAX_STRIDE_BLOCKS as u32);
    Geometry { grid: [grid, 1, 1], block: [STRIDE_THREADS as u32, 1, 1], smem_bytes: 0 }
}

/// Whether a view with `c` channels `pitch` apart at `addr` allows 16-byte accesses.
pub(crate) fn vec4_ok(c: usize, pitch: usize, addr: u64) -> bool {
    c.is_multiple_of(4) && pitch.is_multiple_of(4) && addr.is_multiple_of(16)
}

/// The GEMM kernels' `vec` argument (`VEC_A`, `VEC_B`, `VEC_OUT` of
/// `kernels/tile.cuh`): which operands may move 16 bytes at a time — operand `a`,
/// operand `b`, the output `out`.
pub(crate) fn vec_bits(a: bool, b: bool, out: bool) -> i32 {
    i32::from(a) | i32::from(b) << 1 | i32::from(out) << 2
}

impl Precision {
    /// `f32` or `bf16`, whichever this precision runs.
    pub(crate) fn pick<T>(self, f32: T, bf16: T) -> T {
        match self {
            Precision::F32 => f32,
            Precision::Bf16 => bf16,
        }
    }
}

impl<E: Executor> Backend for Kernels<E> {
    type Buf = E::Mem;
    type Mark = E::Mark;

    fn mark(&self) -> Result<E::Mark> {
        self.exec.mark()
    }
    fn elapsed_ms(&self, start: &E::Mark, end: &E::Mark) -> Result<f64> {
        self.exec.elapsed_ms(start, end)
    }

    fn name(&self) -> &'static str {
        self.exec.name()
    }
    fn describe(&self) -> String {
        match self.precision {
            Precision::F32 => self.exec.describe(),
            Precision::Bf16 => format!("{} (bf16 convolutions)", self.exec.describe()),
        }
    }
    fn device_memory_in_use(&self) -> Option<u64> {
        self.exec.device_memory_in_use()
    }
    fn memory_stats(&self) -> Option<MemoryStats> {
        self.exec.memory_stats()
    }
    fn reset_peak_memory(&self) {
        self.exec.reset_peak_memory()
    }
    fn alloc(&self, len: usize) -> Result<E::Mem> {
        self.exec.alloc(len)
    }
    fn upload(&self, dst: &E::Mem, off: usize, src: &[f32]) -> Result<()> {
        self.exec.upload(dst, off, src)
    }
    fn download(&self, src: &E::Mem, off: usize, dst: &mut [f32]) -> Result<()> {
        self.exec.download(src, off, dst)
    }
    fn zero(&self, buf: &E::Mem, off: usize, len: usize) -> Result<()> {
        self.exec.upload(buf, off, &vec![0.0; len])
    }
    fn device_place(&self, buf: &E::Mem, off: usize) -> Result<Option<(u64, u64)>> {
        self.exec.device_place(buf, off)
    }

    fn conv2d_forward(&self, y: At<Self>, x: At<Self>, w: At<Self>, b: At<Self>, p: &Conv2dParams) -> Result<()> {
        conv2d::forward(self, y, x, w, b, p)
    }
    fn conv2d_backward(
        &self,
        dx: GradIn<Self>,
        dw: At<Self>,
        db: At<Self>,
        dy: At<Self>,
        y: At<Self>,
        x: At<Self>,
        w: At<Self>,
        p: &Conv2dParams,
    ) -> Result<()> {
        conv2d::backward(self, dx, dw, db, dy, y, x, w, p)
    }
    fn deconv_forward(&self, y: At<Self>, x: At<Self>, w: At<Self>, b: At<Self>, p: &DeconvParams) -> Result<()> {
        deconv::forward(self, y, x, w, b, p)
    }
    fn deconv_backward(
        &self,
        dx: GradIn<Self>,
        dw: At<Self>,
        db: At<Self>,
        dy: At<Self>,
        y: At<Self>,
        x: At<Self>,
        w: At<Self>,
        p: &DeconvParams,
    ) -> Result<()> {
        deconv::backward(self, dx, dw, db, dy, y, x, w, p)
    }
    fn maxpool_forward(&self, y: At<Self>, x: At<Self>, p: &MaxPoolParams) -> Result<()> {
        pool::maxpool_forward(self, y, x, p)
    }
    fn maxpool_backward(&self, dx: At<Self>, dy: At<Self>, x: At<Self>, p: &MaxPoolParams) -> Result<()> {
        pool::maxpool_backward(self, dx, dy, x, p)
    }
    fn global_avg_forward(&self, y: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        pool::global_avg_forward(self, y, x, p)
    }
    fn global_avg_backward(&self, dx: At<Self>, dy: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        pool::global_avg_backward(self, dx, dy, p)
    }
    fn global_max_forward(&self, y: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        pool::global_max_forward(self, y, x, p)
    }
    fn global_max_backward(&self, dx: At<Self>, dy: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()> {
        pool::global_max_backward(self, dx, dy, x, p)
    }
    fn loss_sums(
        &self,
        d_mask: At<Self>,
        d_mid: At<Self>,
        d_last: At<Self>,
        mask_logits: At<Self>,
        cls_mid: At<Self>,
        cls_last: At<Self>,
        target: At<Self>,
        p: &LossParams,
        total_n: usize,
    ) -> Result<LossSums> {
        loss::loss_sums(self, d_mask, d_mid, d_last, mask_logits, cls_mid, cls_last, target, p, total_n)
    }
    fn loss_mask_grad(
        &self,
        d_mask: At<Self>,
        x: At<Self>,
        target: At<Self>,
        p: &LossParams,
        c: &MaskCoefs,
    ) -> Result<()> {
        loss::loss_mask_grad(self, d_mask, x, target, p, c)
    }
    fn adam(&self, param: At<Self>, m: At<Self>, v: At<Self>, grad: At<Self>, p: &AdamParams) -> Result<()> {
        adam::adam(self, param, m, v, grad, p)
    }
}

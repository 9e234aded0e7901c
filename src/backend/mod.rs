//! The `Backend` trait: every operation the model needs, forward and backward, at
//! layer granularity, and the parameter structs that describe each launch.
//!
//! A backend owns buffers of f32 (`Backend::Buf`) and operates on places in them
//! ([`At`]: a buffer and an element offset). The shape of every operand is in the
//! op's params struct, so the CPU reference and a GPU launcher take the same
//! arguments in the same order: outputs, inputs, then params.
//!
//! Conventions shared by all backends:
//! - Activations are NHWC; `*_pitch` is the element distance between two pixels, so
//!   an operand may be a channel slice of a wider (concatenated) tensor.
//! - Conv weights are stored `[R][S][C][K]`, transposed-conv weights parity-major
//!   `[a][b][ty][tx][C][K]` (see [`DeconvParams`]); biases `[K]`.
//! - Backward ops overwrite parameter gradients (each parameter is used once per
//!   step); where an input gradient receives contributions from two consumers the
//!   op says whether it writes or adds ([`GradIn`]).

pub mod cpu;
pub mod cuda;
pub mod emu;
pub mod loss;
pub mod memory;

use crate::error::Result;
pub use loss::{LossSums, MaskCoefs};
pub use memory::MemoryStats;

/// A place in a backend buffer: the buffer and the element offset of the operand's
/// first element. The operand's extent comes from the op's params.
pub struct At<'a, B: Backend + ?Sized> {
    /// The buffer.
    pub buf: &'a B::Buf,
    /// Element offset into `buf`.
    pub off: usize,
}

impl<B: Backend + ?Sized> Clone for At<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for At<'_, B> {}

impl<'a, B: Backend + ?Sized> At<'a, B> {
    /// `buf` at element `off`.
    pub fn new(buf: &'a B::Buf, off: usize) -> Self {
        At { buf, off }
    }
}

/// What to do with an input gradient.
pub enum GradIn<'a, B: Backend + ?Sized> {
    /// Not needed (the network input, during training).
    Skip,
    /// Overwrite the destination.
    Write(At<'a, B>),
    /// Add into the destination (a tensor with two consumers).
    Add(At<'a, B>),
}

/// Elements spanned by `pixels` pixels of `c` channels, `pitch` apart.
pub fn view_len(pixels: usize, c: usize, pitch: usize) -> usize {
    if pixels == 0 || c == 0 {
        0
    } else {
        (pixels - 1) * pitch + c
    }
}

/// A convolution with stride 1 and "same" padding (`R`/2), `R`×`R` filter (3 or 1),
/// bias and optional fused ReLU. PyTorch: `relu(conv2d(x, w, b, padding=R//2))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Batch.
    pub n: usize,
    /// Input (and output) height.
    pub h: usize,
    /// Input (and output) width.
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub k: usize,
    /// Filter size, 1 or 3.
    pub r: usize,
    /// Fused ReLU on the output.
    pub relu: bool,
    /// Element distance between pixels of the input.
    pub x_pitch: usize,
    /// Element distance between pixels of the output.
    pub y_pitch: usize,
}

impl Conv2dParams {
    /// Output height `P`.
    pub fn out_h(&self) -> usize {
        self.h
    }
    /// Output width `Q`.
    pub fn out_w(&self) -> usize {
        self.w
    }
    /// Padding on each side.
    pub fn pad(&self) -> usize {
        self.r / 2
    }
    /// Weight elements, `R*R*C*K`.
    pub fn weight_len(&self) -> usize {
        self.r * self.r * self.c * self.k
    }
    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> usize {
        self.n * self.h * self.w * self.weight_len()
    }
}

/// Transposed convolution 4x4, stride 2, padding 1 (doubles H and W), bias and
/// optional fused ReLU. PyTorch: `relu(conv_transpose2d(x, w, b, stride=2, padding=1))`.
///
/// Output row `oy = 2i + a` (a ∈ {0,1}) takes input rows `iy = i - 1 + a + ty`
/// (ty ∈ {0,1}) through filter row `ky = 3 - a - 2ty`; columns likewise with
/// `b`, `tx`, `kx`. So each output parity is a 2x2 convolution of the input, and the
/// weights are stored parity-major: `[a][b][ty][tx][C][K]`, with
/// `internal[a][b][ty][tx][c][k] = pytorch[c][k][3-a-2ty][3-b-2tx]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeconvParams {
    /// Batch.
    pub n: usize,
    /// Input height (output is 2H).
    pub h: usize,
    /// Input width (output is 2W).
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub k: usize,
    /// Fused ReLU on the output.
    pub relu: bool,
    /// Element distance between pixels of the input.
    pub x_pitch: usize,
    /// Element distance between pixels of the output.
    pub y_pitch: usize,
}

impl DeconvParams {
    /// Output height `P = 2H`.
    pub fn out_h(&self) -> usize {
        2 * self.h
    }
    /// Output width `Q = 2W`.
    pub fn out_w(&self) -> usize {
        2 * self.w
    }
    /// Weight elements, `16*C*K`.
    pub fn weight_len(&self) -> usize {
        16 * self.c * self.k
    }
    /// Multiply-accumulates of the forward pass (4 taps per output pixel).
    pub fn macs(&self) -> usize {
        self.n * self.out_h() * self.out_w() * 4 * self.c * self.k
    }
}

/// 2x2 max pooling, stride 2 (H and W even). Ties go to the first maximum in the
/// order (0,0), (0,1), (1,0), (1,1), as PyTorch's `max_pool2d` does; NaN wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolParams {
    /// Batch.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Element distance between pixels of the input.
    pub x_pitch: usize,
    /// Element distance between pixels of the output.
    pub y_pitch: usize,
}

impl MaxPoolParams {
    /// Output height `H/2`.
    pub fn out_h(&self) -> usize {
        self.h / 2
    }
    /// Output width `W/2`.
    pub fn out_w(&self) -> usize {
        self.w / 2
    }
}

/// Global pooling over H×W of an NHWC tensor to a dense `[N, C]` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalPoolParams {
    /// Batch.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Element distance between pixels of the input.
    pub x_pitch: usize,
}

/// The multi-task loss of docs/ARCHITECTURE.md §2 over `K` mask channels.
///
/// Inputs: `mask_logits` and `target` dense NHWC `[N,H,W,K]`, `cls_mid` and
/// `cls_last` dense `[N,K]`. With s = sigmoid(mask_logits), I = Σ s·t,
/// U = Σ s + Σ t (whole batch), y[n,k] = 1 where target channel k of sample n has
/// a positive pixel:
/// - loss1 = mean BCEWithLogits(mask_logits, t) − log((I + ε) / (U − I + ε)), ε = 1e-15
/// - loss2 = mean BCEWithLogits(cls_mid, y), loss3 = mean BCEWithLogits(cls_last, y)
/// - loss = loss1 + 0.5·loss2 + 0.5·loss3
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossParams {
    /// Batch.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Attributes (mask channels).
    pub k: usize,
}

/// The loss and its components, as scalars on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    /// loss1 + 0.5·loss2 + 0.5·loss3.
    pub loss: f64,
    /// Mask BCE − log soft Jaccard.
    pub loss1: f64,
    /// Middle (average-pool) head BCE.
    pub loss2: f64,
    /// Last (max-pool) head BCE.
    pub loss3: f64,
}

/// One Adam step over a flat buffer, PyTorch's formulas (no weight decay):
/// m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    /// Elements.
    pub len: usize,
    /// Learning rate.
    pub lr: f32,
    /// β1 (0.9).
    pub beta1: f32,
    /// β2 (0.999).
    pub beta2: f32,
    /// ε (1e-8).
    pub eps: f32,
    /// Step number t, starting at 1.
    pub step: u64,
}

/// 8-bit RGB `[N,H,W,3]` (dense bytes) → normalised f32 NHWC with `y_pitch`: the
/// `normalize_image` op of `cpu::layout` and `cuda::layout` (not in the trait yet).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageParams {
    /// Batch.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Element distance between pixels of the output (≥ 3).
    pub y_pitch: usize,
    /// Channel means on [0, 1] pixels (R, G, B): `data::batch::IMAGENET_MEAN`.
    pub mean: [f32; 3],
    /// Channel standard deviations on [0, 1] pixels: `data::batch::IMAGENET_STD`.
    pub std: [f32; 3],
}

impl ImageParams {
    /// Pixels, N·H·W.
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
    /// Bytes of the input, 3·N·H·W.
    pub fn bytes(&self) -> usize {
        3 * self.pixels()
    }
    /// Elements spanned by the output.
    pub fn y_len(&self) -> usize {
        view_len(self.pixels(), 3, self.y_pitch)
    }
}

/// A dense NCHW tensor `[N,C,H,W]` and an NHWC one `[N,H,W,C]` with `pitch` elements
/// between pixels (a channel slice of a wider tensor when `pitch` > C): the
/// `nchw_to_nhwc` / `nhwc_to_nchw` ops of `cpu::layout` and `cuda::layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutParams {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Element distance between pixels of the NHWC side (≥ C).
    pub pitch: usize,
}

impl LayoutParams {
    /// Elements of the NCHW side.
    pub fn nchw_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// Elements spanned by the NHWC side.
    pub fn nhwc_len(&self) -> usize {
        view_len(self.n * self.h * self.w, self.c, self.pitch)
    }
}

/// The operations of the multi-task U-Net, forward and backward.
///
/// All offsets and extents are checked; an operand outside its buffer, or an output
/// overlapping an input, is an error, never undefined behaviour.
pub trait Backend {
    /// A buffer of f32 owned by the backend.
    type Buf;

    /// Short name for messages (`cpu`, `cuda`, `emu`).
    fn name(&self) -> &'static str;
    /// The name and the hardware, for reports (`cuda: NVIDIA H100 80GB HBM3`).
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Bytes of device memory in use on the whole device (a GPU; `None` where the
    /// memory is the host's).
    fn device_memory_in_use(&self) -> Option<u64> {
        None
    }
    /// What this backend's allocator has handed out: every buffer, the ops'
    /// workspaces included (`None` where it does not count: the CPU).
    fn memory_stats(&self) -> Option<MemoryStats> {
        None
    }
    /// Starts a new peak in [`Backend::memory_stats`] at what is live now.
    fn reset_peak_memory(&self) {}

    /// A zero-filled buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// Copies `src` into `dst` at element `off`.
    fn upload(&self, dst: &Self::Buf, off: usize, src: &[f32]) -> Result<()>;
    /// Copies `dst.len()` elements from `src` at element `off`.
    fn download(&self, src: &Self::Buf, off: usize, dst: &mut [f32]) -> Result<()>;
    /// Sets `len` elements at `off` to zero.
    fn zero(&self, buf: &Self::Buf, off: usize, len: usize) -> Result<()>;
    /// The device address of element `off` of `buf` and the raw handle of the
    /// stream this backend queues its work on, for a library that works on device
    /// memory itself (NCCL); `None` where buffers are host memory (cpu, emu).
    fn device_place(&self, _buf: &Self::Buf, _off: usize) -> Result<Option<(u64, u64)>> {
        Ok(None)
    }

    /// A point in the backend's queue of work, for timing it: a CUDA event on a GPU,
    /// the wall clock where every op runs before it returns (cpu, emu).
    type Mark;
    /// Marks where the work given so far ends.
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds between two marks, `start` given before `end`: the time the
    /// backend spent on the work between them. Waits until `end` is reached.
    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64>;

    /// `y = act(conv(x, w) + b)`.
    fn conv2d_forward(&self, y: At<Self>, x: At<Self>, w: At<Self>, b: At<Self>, p: &Conv2dParams) -> Result<()>;
    /// Gradients of [`Backend::conv2d_forward`]. `dy` is the gradient of the
    /// (post-ReLU) output `y`; with `p.relu` it is masked by `y > 0` in place.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// `y = act(conv_transpose(x, w) + b)`, 4x4 stride 2 padding 1.
    fn deconv_forward(&self, y: At<Self>, x: At<Self>, w: At<Self>, b: At<Self>, p: &DeconvParams) -> Result<()>;
    /// Gradients of [`Backend::deconv_forward`]; `dy` is masked in place as for conv.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// 2x2 max pooling.
    fn maxpool_forward(&self, y: At<Self>, x: At<Self>, p: &MaxPoolParams) -> Result<()>;
    /// Routes `dy` to each window's argmax (recomputed from `x`), adding into `dx`.
    fn maxpool_backward(&self, dx: At<Self>, dy: At<Self>, x: At<Self>, p: &MaxPoolParams) -> Result<()>;

    /// `y[n,c]` = mean over H×W of `x[n,:,:,c]`.
    fn global_avg_forward(&self, y: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()>;
    /// `dx[n,h,w,c] = dy[n,c] / (H·W)`, overwriting `dx`.
    fn global_avg_backward(&self, dx: At<Self>, dy: At<Self>, p: &GlobalPoolParams) -> Result<()>;
    /// `y[n,c]` = max over H×W of `x[n,:,:,c]` (first maximum in raster order).
    fn global_max_forward(&self, y: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()>;
    /// Adds `dy[n,c]` into `dx` at each (n,c)'s argmax.
    fn global_max_backward(&self, dx: At<Self>, dy: At<Self>, x: At<Self>, p: &GlobalPoolParams) -> Result<()>;

    /// The loss of [`LossParams`] and the gradients of `loss` with respect to the
    /// three logit tensors (written, not added): [`Backend::loss_sums`],
    /// [`LossSums::finish`] and [`Backend::loss_mask_grad`] on one whole batch.
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &self,
        d_mask: At<Self>,
        d_mid: At<Self>,
        d_last: At<Self>,
        mask_logits: At<Self>,
        cls_mid: At<Self>,
        cls_last: At<Self>,
        target: At<Self>,
        p: &LossParams,
    ) -> Result<LossParts> {
        let sums = self.loss_sums(d_mask, d_mid, d_last, mask_logits, cls_mid, cls_last, target, p, p.n)?;
        let (parts, coefs) = sums.finish(p, p.n);
        self.loss_mask_grad(d_mask, mask_logits, target, p, &coefs)?;
        Ok(parts)
    }

    /// The first part of the loss on this replica's `p.n` samples, of a global
    /// batch of `total_n` (module [`loss`]): returns the sums and writes `d_mid` and
    /// `d_last` (their gradients need only the labels, which are per sample, and
    /// the global batch size). `d_mask` holds the backend's intermediate values
    /// until [`Backend::loss_mask_grad`] overwrites it; nothing may touch it between.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<LossSums>;

    /// The last part of the loss: `d_mask`, the gradient of the loss with respect
    /// to the mask logits, from the factors of the global sums
    /// ([`LossSums::finish`]), after [`Backend::loss_sums`] on the same operands.
    fn loss_mask_grad(
        &self,
        d_mask: At<Self>,
        mask_logits: At<Self>,
        target: At<Self>,
        p: &LossParams,
        c: &MaskCoefs,
    ) -> Result<()>;

    /// One Adam step, updating `param`, `m` and `v` in place from `grad`.
    fn adam(&self, param: At<Self>, m: At<Self>, v: At<Self>, grad: At<Self>, p: &AdamParams) -> Result<()>;
}

//! The activation arena: where every tensor of one forward/backward pass lives.
//!
//! One buffer holds all activations; a second buffer of the same size holds their
//! gradients at the same offsets (the gradient of the tensor at offset `o` is at
//! offset `o` of the gradient arena). The skip connections cost no copies: each
//! encoder block writes its last conv straight into the upper channels of the
//! concatenated tensor that the decoder reads, and each decoder deconv writes into
//! the lower channels of the next one (PyTorch's `cat([dec, enc], 1)` order).

use super::config::UNetConfig;
use crate::error::{Error, Result};

/// Offsets are rounded up to this many elements (256 bytes: aligned for vector
/// loads on every backend).
const ALIGN: usize = 64;

/// An NHWC tensor, or a channel slice of one, in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Element offset of channel 0 of pixel 0.
    pub off: usize,
    /// Batch.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels of this view.
    pub c: usize,
    /// Elements from one pixel to the next (the whole tensor's channel count).
    pub pitch: usize,
}

impl View {
    /// Elements of the whole tensor this view spans.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.pitch
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels `[c0, c0 + c)` of this view.
    pub fn channels(&self, c0: usize, c: usize) -> View {
        debug_assert!(c0 + c <= self.c);
        View { off: self.off + c0, c, ..*self }
    }
}

/// Hands out aligned, disjoint tensors.
struct Allocator {
    next: usize,
    n: usize,
}

impl Allocator {
    fn tensor(&mut self, h: usize, w: usize, c: usize) -> View {
        let off = self.next.div_ceil(ALIGN) * ALIGN;
        let v = View { off, n: self.n, h, w, c, pitch: c };
        self.next = off + v.len();
        v
    }
}

/// Every tensor of UNet16 for one batch shape. Indices: encoder block `b` = 0..5
/// (conv1..conv5), decoder block `i` = 0..5 (center, dec5, dec4, dec3, dec2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Batch.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Normalised input image `[N,H,W,3]`.
    pub input: View,
    /// Outputs of the 13 encoder convs; the last of each block is a slice of `cat[b]`.
    pub enc: [View; 13],
    /// 2x2 max pool of each encoder block (`pool[4]` feeds the center).
    pub pool: [View; 5],
    /// Concatenated decoder inputs at each encoder resolution: `cat[b]` =
    /// (up-sampled decoder output, encoder block `b`).
    pub cat: [View; 5],
    /// Output of each decoder block's 3x3 conv.
    pub dec_conv: [View; 5],
    /// Output of each decoder block's deconv (a slice of `cat[4 - i]`).
    pub dec_up: [View; 5],
    /// dec1's conv output.
    pub dec1: View,
    /// `final` conv output, `[N,H,W,K]`.
    pub mask_logits: View,
    /// `center_Conv2d` output at H/16, `[N,H/16,W/16,K]`.
    pub head_map: View,
    /// Middle head logits `[N,K]`.
    pub cls_mid: View,
    /// Last head logits `[N,K]`.
    pub cls_last: View,
    /// Elements of the arena.
    pub len: usize,
}

/// Convs per VGG16 block.
pub const BLOCK_CONVS: [usize; 5] = [2, 2, 3, 3, 3];

/// Checks the batch shape the model accepts: N ≥ 1, H and W positive multiples of 32.
pub fn check_input_size(n: usize, h: usize, w: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::shape("input", "a batch of at least one image", "N = 0"));
    }
    if h == 0 || w == 0 || !h.is_multiple_of(32) || !w.is_multiple_of(32) {
        return Err(Error::shape(
            "input",
            "H and W positive multiples of 32 (the network pools five times)",
            format!("{h}x{w}; resize or pad the images"),
        ));
    }
    Ok(())
}

impl Plan {
    /// The arena for a batch of `n` images of `h`×`w` through `cfg`.
    pub fn new(cfg: &UNetConfig, n: usize, h: usize, w: usize) -> Result<Self> {
        check_input_size(n, h, w)?;
        let mut a = Allocator { next: 0, n };
        let k = cfg.classes;
        let res = |b: usize| (h >> b, w >> b);
        let input = a.tensor(h, w, 3);
        let cat: [View; 5] = std::array::from_fn(|b| {
            let (hb, wb) = res(b);
            a.tensor(hb, wb, cfg.dec_out[4 - b] + cfg.enc[b])
        });
        let mut enc = [input; 13];
        let mut pool = [input; 5];
        let mut i = 0;
        for b in 0..5 {
            let (hb, wb) = res(b);
            for j in 0..BLOCK_CONVS[b] {
                enc[i] = if j + 1 == BLOCK_CONVS[b] {
                    cat[b].channels(cfg.dec_out[4 - b], cfg.enc[b])
                } else {
                    a.tensor(hb, wb, cfg.enc[b])
                };
                i += 1;
            }
            let (hp, wp) = res(b + 1);
            pool[b] = a.tensor(hp, wp, cfg.enc[b]);
        }
        let dec_conv: [View; 5] = std::array::from_fn(|i| {
            let (hi, wi) = res(5 - i);
            a.tensor(hi, wi, cfg.dec_mid[i])
        });
        let dec_up: [View; 5] = std::array::from_fn(|i| cat[4 - i].channels(0, cfg.dec_out[i]));
        let dec1 = a.tensor(h, w, cfg.dec1);
        let mask_logits = a.tensor(h, w, k);
        let (h4, w4) = res(4);
        let head_map = a.tensor(h4, w4, k);
        let cls_mid = a.tensor(1, 1, k);
        let cls_last = a.tensor(1, 1, k);
        Ok(Plan {
            n,
            h,
            w,
            input,
            enc,
            pool,
            cat,
            dec_conv,
            dec_up,
            dec1,
            mask_logits,
            head_map,
            cls_mid,
            cls_last,
            len: a.next,
        })
    }
}

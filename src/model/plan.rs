//! The activation arena: where every tensor of one forward/backward pass lives.
//!
//! One buffer holds all activations; for training a second buffer of the same size
//! holds their gradients at the same offsets (the gradient of the tensor at offset
//! `o` is at offset `o` of the gradient arena), and every tensor has its own place,
//! since the backward pass reads them all. The skip connections cost no copies: each
//! encoder block writes its last conv straight into the upper channels of the
//! concatenated tensor that the decoder reads, and each decoder deconv writes into
//! the lower channels of the next one (PyTorch's `cat([dec, enc], 1)` order).
//!
//! For inference ([`Plan::inference`]) there is no gradient arena and tensors whose
//! lifetimes in the forward pass do not overlap share memory (`packing.rs`): the
//! arena is about the peak of the tensors alive at once, not their sum (at 512x512,
//! a third).

use super::config::UNetConfig;
use super::packing::{self, Item};
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
    /// Training (every tensor its own place) or inference (places shared).
    pub kind: PlanKind,
}

/// How a [`Plan`] places its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanKind {
    /// Every tensor in its own place, for the forward and backward passes.
    Training,
    /// Tensors that are not alive at the same time in the forward pass share memory;
    /// only the forward pass may run on it.
    Inference,
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
            kind: PlanKind::Training,
        })
    }

    /// The arena for inference only: the tensors of [`Plan::new`], placed so that
    /// those alive at the same step of the forward pass are disjoint and the others
    /// share memory. The outputs (mask logits, both heads) stay valid after the pass.
    pub fn inference(cfg: &UNetConfig, n: usize, h: usize, w: usize) -> Result<Self> {
        let mut plan = Plan::new(cfg, n, h, w)?;
        let roots = plan.roots();
        let items = plan.lifetimes(&roots);
        let (offsets, len) = packing::pack(&items, ALIGN);
        let moved = |off: usize| {
            let r = roots
                .iter()
                .position(|r| r.off <= off && off < r.off + r.len().max(1))
                .expect("every view is in a root");
            offsets[r] + (off - roots[r].off)
        };
        for v in plan.views_mut() {
            v.off = moved(v.off);
        }
        plan.len = len;
        plan.kind = PlanKind::Inference;
        Ok(plan)
    }

    /// The most elements alive at once in the forward pass of a batch of `n` images
    /// of `h`×`w`: what no inference arena can go below.
    pub fn live_peak(cfg: &UNetConfig, n: usize, h: usize, w: usize) -> Result<usize> {
        // On the training plan, where every tensor has its own place to be found by.
        let plan = Plan::new(cfg, n, h, w)?;
        Ok(packing::live_peak(&plan.lifetimes(&plan.roots())))
    }

    /// Every view of the plan.
    fn views_mut(&mut self) -> Vec<&mut View> {
        let mut v: Vec<&mut View> = vec![&mut self.input];
        v.extend(self.enc.iter_mut());
        v.extend(self.pool.iter_mut());
        v.extend(self.cat.iter_mut());
        v.extend(self.dec_conv.iter_mut());
        v.extend(self.dec_up.iter_mut());
        v.extend([&mut self.dec1, &mut self.mask_logits, &mut self.head_map, &mut self.cls_mid, &mut self.cls_last]);
        v
    }

    /// The whole tensors (not channel slices), sorted by offset.
    fn roots(&self) -> Vec<View> {
        let mut copy = self.clone();
        let mut roots: Vec<View> = copy.views_mut().into_iter().filter(|v| v.c == v.pitch).map(|v| *v).collect();
        roots.sort_by_key(|r| r.off);
        roots.dedup();
        roots
    }

    /// The views each op of the forward pass touches, in the order
    /// `UNet16::forward_profiled` runs them (written out the same way).
    fn forward_steps(&self) -> Vec<Vec<View>> {
        let mut steps = Vec::new();
        let mut x = self.input;
        let mut i = 0;
        for (b, &convs) in BLOCK_CONVS.iter().enumerate() {
            for _ in 0..convs {
                steps.push(vec![self.enc[i], x]);
                x = self.enc[i];
                i += 1;
            }
            steps.push(vec![self.pool[b], x]);
            x = self.pool[b];
        }
        for d in 0..5 {
            let input = if d == 0 { self.pool[4] } else { self.cat[5 - d] };
            steps.push(vec![self.dec_conv[d], input]);
            steps.push(vec![self.dec_up[d], self.dec_conv[d]]);
        }
        steps.push(vec![self.dec1, self.cat[0]]);
        steps.push(vec![self.mask_logits, self.dec1]);
        steps.push(vec![self.head_map, self.dec_up[0]]);
        steps.push(vec![self.cls_mid, self.head_map]);
        steps.push(vec![self.cls_last, self.mask_logits]);
        steps
    }

    /// Each root's size (aligned) and the steps it is alive in; the input from the
    /// start (it is uploaded before the pass), the outputs to the end.
    fn lifetimes(&self, roots: &[View]) -> Vec<Item> {
        let steps = self.forward_steps();
        let end = steps.len();
        let inside = |r: &View, v: &View| r.off <= v.off && v.off < r.off + r.len().max(1);
        roots
            .iter()
            .map(|r| {
                let touched: Vec<usize> =
                    steps.iter().enumerate().filter(|(_, s)| s.iter().any(|v| inside(r, v))).map(|(i, _)| i).collect();
                let output = [self.mask_logits, self.cls_mid, self.cls_last].iter().any(|o| inside(r, o));
                let first = if inside(r, &self.input) { 0 } else { touched.first().copied().unwrap_or(0) };
                let last = if output { end } else { touched.last().copied().unwrap_or(first) };
                Item { size: r.len().next_multiple_of(ALIGN), first, last }
            })
            .collect()
    }
}

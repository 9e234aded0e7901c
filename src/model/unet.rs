//! UNet16 forward and backward, written out layer by layer (no autograd tape).
//!
//! The model holds the flat parameter and parameter-gradient buffers; a
//! [`Workspace`] holds the activation arena, its gradient twin and the targets for
//! one batch shape. The order of the backward pass matters where a tensor has two
//! consumers (each encoder block's output feeds its pool and the decoder; the center
//! feeds dec5 and the middle head): the consumer listed first in the backward pass
//! writes the gradient, the second adds to it.
//!
//! Every layer's work is bracketed by a [`LayerHook`] (a no-op unless the caller
//! passes one to [`UNet16::forward_profiled`] / [`UNet16::backward_profiled`]), so the
//! profiler times exactly the code path training runs, with no second layer list.

use std::fmt;

use super::config::UNetConfig;
use super::params::{LayerParams, ParamKind, ParamTable};
use super::plan::{Plan, PlanKind, View, BLOCK_CONVS};
use crate::backend::{
    At, Backend, Conv2dParams, DeconvParams, GlobalPoolParams, GradIn, LossParams, LossParts, LossSums, MaxPoolParams,
};
use crate::error::{Error, Result};

/// The multi-task U-Net: widths, parameter table and the flat buffers.
pub struct UNet16<B: Backend> {
    /// Channel widths.
    pub cfg: UNetConfig,
    /// Where each parameter lives in `params` and `grads`.
    pub table: ParamTable,
    /// All parameters, internal layouts.
    pub params: B::Buf,
    /// Their gradients, same offsets (an empty buffer for [`UNet16::for_inference`]).
    pub grads: B::Buf,
    /// Whether `grads` is there (the backward pass needs it).
    trainable: bool,
}

/// Per-batch-shape buffers.
pub struct Workspace<B: Backend> {
    /// Where each tensor lives.
    pub plan: Plan,
    /// Activations.
    pub acts: B::Buf,
    /// Activation gradients, same offsets as `acts`.
    pub dacts: B::Buf,
    /// Target masks, NHWC `[N,H,W,K]`.
    pub target: B::Buf,
}

/// A layer of UNet16 as the profiler names it. Indices are 0-based; names are
/// 1-based like the paper's blocks (`Enc(0, 1)` is `enc1_2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Conv `j` of encoder block `b`: `enc{b+1}_{j+1}`.
    Enc(usize, usize),
    /// The 2x2 max pool after encoder block `b`: `pool{b+1}`.
    Pool(usize),
    /// The 3x3 conv of decoder block `i` (0 = center, 1 = dec5 … 4 = dec2):
    /// `center_conv`, `dec5_conv` … `dec2_conv`.
    DecConv(usize),
    /// The deconv of decoder block `i`: `center_up`, `dec5_up` … `dec2_up`.
    DecUp(usize),
    /// `dec1`: the last 3x3 conv.
    Dec1,
    /// `final`: the 1x1 conv to the mask logits.
    Final,
    /// `head_mid`: 1x1 conv on the center and global average pool.
    HeadMid,
    /// `head_last`: global max pool of the mask logits.
    HeadLast,
    /// `loss`: value and logit gradients in one op (so it runs in the backward pass).
    Loss,
    /// `adam`: the optimizer step (run by the trainer, not by the model).
    Adam,
}

impl Layer {
    /// Every layer in the order a table lists them (data flow; the middle head after
    /// the center, the loss and optimizer last).
    pub fn all() -> Vec<Layer> {
        let mut v = Vec::new();
        for (b, &convs) in BLOCK_CONVS.iter().enumerate() {
            v.extend((0..convs).map(|j| Layer::Enc(b, j)));
            v.push(Layer::Pool(b));
        }
        for i in 0..5 {
            v.extend([Layer::DecConv(i), Layer::DecUp(i)]);
            if i == 0 {
                v.push(Layer::HeadMid);
            }
        }
        v.extend([Layer::Dec1, Layer::Final, Layer::HeadLast, Layer::Loss, Layer::Adam]);
        v
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DEC: [&str; 5] = ["center", "dec5", "dec4", "dec3", "dec2"];
        match *self {
            Layer::Enc(b, j) => write!(f, "enc{}_{}", b + 1, j + 1),
            Layer::Pool(b) => write!(f, "pool{}", b + 1),
            Layer::DecConv(i) => write!(f, "{}_conv", DEC[i]),
            Layer::DecUp(i) => write!(f, "{}_up", DEC[i]),
            Layer::Dec1 => f.write_str("dec1"),
            Layer::Final => f.write_str("final"),
            Layer::HeadMid => f.write_str("head_mid"),
            Layer::HeadLast => f.write_str("head_last"),
            Layer::Loss => f.write_str("loss"),
            Layer::Adam => f.write_str("adam"),
        }
    }
}

/// Which pass a layer's work belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The forward pass.
    Forward,
    /// The loss, the backward pass and the optimizer step.
    Backward,
}

/// Observes the layers of a pass: [`LayerHook::begin`] right before a layer issues
/// its work, [`LayerHook::end`] right after. A layer may be bracketed more than once
/// per pass (`head_mid` is a conv and a pool); observers add the pieces up.
pub trait LayerHook {
    /// `layer` is about to run in `pass`, doing `macs` multiply-accumulates.
    fn begin(&mut self, layer: Layer, pass: Pass, macs: usize);
    /// `layer` has issued its work (a GPU observer synchronises to time it).
    fn end(&mut self, layer: Layer, pass: Pass);
}

/// The hook that observes nothing: what [`UNet16::forward`] and [`UNet16::backward`] use.
pub struct NoHook;

impl LayerHook for NoHook {
    fn begin(&mut self, _: Layer, _: Pass, _: usize) {}
    fn end(&mut self, _: Layer, _: Pass) {}
}

/// How one replica's loss sums become the global batch's (data parallelism).
pub trait LossShards {
    /// The global batch size, of which this replica holds `local_n`.
    fn total_n(&self, local_n: usize) -> usize;
    /// The sums over every replica, given this one's.
    fn reduce(&mut self, sums: LossSums) -> Result<LossSums>;
}

/// One replica holding the whole batch: the sums are the batch's.
pub struct WholeBatch;

impl LossShards for WholeBatch {
    fn total_n(&self, local_n: usize) -> usize {
        local_n
    }
    fn reduce(&mut self, sums: LossSums) -> Result<LossSums> {
        Ok(sums)
    }
}

/// What the backward pass does with the gradient of a layer's input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dx {
    Skip,
    Write,
    Add,
}

impl<B: Backend> UNet16<B> {
    /// A model with `flat` parameters (internal layouts, `table.len` values).
    pub fn new(be: &B, cfg: UNetConfig, flat: &[f32]) -> Result<Self> {
        Self::with_gradients(be, cfg, flat, true)
    }

    /// A model for the forward pass only: no gradient buffer (its backward pass is
    /// an error). What prediction uses.
    pub fn for_inference(be: &B, cfg: UNetConfig, flat: &[f32]) -> Result<Self> {
        Self::with_gradients(be, cfg, flat, false)
    }

    fn with_gradients(be: &B, cfg: UNetConfig, flat: &[f32], trainable: bool) -> Result<Self> {
        let table = ParamTable::new(&cfg);
        if flat.len() != table.len {
            return Err(Error::shape("UNet16 parameters", table.len, flat.len()));
        }
        let params = be.alloc(table.len)?;
        be.upload(&params, 0, flat)?;
        let grads = be.alloc(if trainable { table.len } else { 0 })?;
        Ok(UNet16 { cfg, table, params, grads, trainable })
    }

    /// Buffers for training on batches of `n` images of `h`×`w`: the activation
    /// arena, its gradient twin and the targets.
    pub fn workspace(&self, be: &B, n: usize, h: usize, w: usize) -> Result<Workspace<B>> {
        let plan = Plan::new(&self.cfg, n, h, w)?;
        Ok(Workspace {
            acts: be.alloc(plan.len)?,
            dacts: be.alloc(plan.len)?,
            target: be.alloc(n * h * w * self.cfg.classes)?,
            plan,
        })
    }

    /// Buffers for the forward pass alone on batches of `n` images of `h`×`w`: the
    /// inference arena ([`Plan::inference`]: tensors share memory once their
    /// consumers have run), no gradients, no targets.
    pub fn inference_workspace(&self, be: &B, n: usize, h: usize, w: usize) -> Result<Workspace<B>> {
        let plan = Plan::inference(&self.cfg, n, h, w)?;
        Ok(Workspace { acts: be.alloc(plan.len)?, dacts: be.alloc(0)?, target: be.alloc(0)?, plan })
    }

    /// Forward pass: from `plan.input` to the mask logits and both heads.
    pub fn forward(&self, be: &B, ws: &Workspace<B>) -> Result<()> {
        self.forward_profiled(be, ws, &mut NoHook)
    }

    /// Loss against `ws.target` and the backward pass: every parameter gradient into
    /// `self.grads`, and the input image's gradient into the gradient arena when
    /// `input_grad` is set. Call after [`UNet16::forward`].
    pub fn backward(&self, be: &B, ws: &Workspace<B>, input_grad: bool) -> Result<LossParts> {
        self.backward_profiled(be, ws, input_grad, &mut NoHook)
    }

    /// [`UNet16::forward`], reporting each layer to `hook`.
    pub fn forward_profiled(&self, be: &B, ws: &Workspace<B>, hook: &mut dyn LayerHook) -> Result<()> {
        let mut r = Run { model: self, be, ws, hook };
        let (p, t) = (&ws.plan, &self.table);
        // Encoder: VGG16 blocks, each followed by its pool.
        let mut x = p.input;
        for (b, &convs) in BLOCK_CONVS.iter().enumerate() {
            for j in 0..convs {
                let i = encoder_index(b, j);
                r.conv(Layer::Enc(b, j), p.enc[i], x, &t.encoder[i], true)?;
                x = p.enc[i];
            }
            r.maxpool(Layer::Pool(b), p.pool[b], x)?;
            x = p.pool[b];
        }
        // Decoder: conv3x3+ReLU, deconv+ReLU into the next concatenated tensor.
        for (d, (conv, deconv)) in t.decoder.iter().enumerate() {
            let input = if d == 0 { p.pool[4] } else { p.cat[5 - d] };
            r.conv(Layer::DecConv(d), p.dec_conv[d], input, conv, true)?;
            r.deconv(Layer::DecUp(d), p.dec_up[d], p.dec_conv[d], deconv)?;
        }
        r.conv(Layer::Dec1, p.dec1, p.cat[0], &t.dec1, true)?;
        r.conv(Layer::Final, p.mask_logits, p.dec1, &t.final_conv, false)?;
        // Heads: 1x1 conv + global average on the center, global max on the masks.
        r.conv(Layer::HeadMid, p.head_map, p.dec_up[0], &t.center_head, false)?;
        let acts = &ws.acts;
        r.timed(Layer::HeadMid, Pass::Forward, 0, |be| {
            be.global_avg_forward(at(acts, p.cls_mid), at(acts, p.head_map), &gpool(p.head_map))
        })?;
        r.timed(Layer::HeadLast, Pass::Forward, 0, |be| {
            be.global_max_forward(at(acts, p.cls_last), at(acts, p.mask_logits), &gpool(p.mask_logits))
        })
    }

    /// [`UNet16::backward`], reporting each layer to `hook`.
    pub fn backward_profiled(
        &self,
        be: &B,
        ws: &Workspace<B>,
        input_grad: bool,
        hook: &mut dyn LayerHook,
    ) -> Result<LossParts> {
        self.backward_sharded(be, ws, input_grad, hook, &mut WholeBatch)
    }

    /// [`UNet16::backward_profiled`] on one replica's shard of a global batch: the
    /// loss's sums go through `shards` (an all-reduce over the replicas) before the
    /// loss and its gradients are computed for the global batch, so the parameter
    /// gradients of the replicas add up to those of the whole batch.
    pub fn backward_sharded(
        &self,
        be: &B,
        ws: &Workspace<B>,
        input_grad: bool,
        hook: &mut dyn LayerHook,
        shards: &mut dyn LossShards,
    ) -> Result<LossParts> {
        if !self.trainable || ws.plan.kind != PlanKind::Training {
            return Err(Error::shape(
                "backward pass",
                "a model and workspace made for training (UNet16::new, UNet16::workspace)",
                "one made for inference (no gradient buffers)",
            ));
        }
        let mut r = Run { model: self, be, ws, hook };
        let (p, t) = (&ws.plan, &self.table);
        let (acts, dacts) = (&ws.acts, &ws.dacts);
        let m = p.mask_logits;
        let lp = LossParams { n: m.n, h: m.h, w: m.w, k: m.c };
        let target = At::new(&ws.target, 0);
        let parts = r.timed(Layer::Loss, Pass::Backward, 0, |be| {
            let total = shards.total_n(m.n);
            let (d_mid, d_last) = (at(dacts, p.cls_mid), at(dacts, p.cls_last));
            let (mid, last) = (at(acts, p.cls_mid), at(acts, p.cls_last));
            let sums = be.loss_sums(at(dacts, m), d_mid, d_last, at(acts, m), mid, last, target, &lp, total)?;
            let (parts, coefs) = shards.reduce(sums)?.finish(&lp, total);
            be.loss_mask_grad(at(dacts, m), at(acts, m), target, &lp, &coefs)?;
            Ok(parts)
        })?;
        r.timed(Layer::HeadLast, Pass::Backward, 0, |be| {
            be.global_max_backward(at(dacts, m), at(dacts, p.cls_last), at(acts, m), &gpool(m))
        })?;
        r.conv_back(Layer::Final, Dx::Write, m, p.dec1, &t.final_conv, false)?;
        r.conv_back(Layer::Dec1, Dx::Write, p.dec1, p.cat[0], &t.dec1, true)?;
        for (d, (conv, deconv)) in t.decoder.iter().enumerate().rev() {
            if d == 0 {
                // The center's output also feeds the middle head; dec5 wrote its
                // gradient, the head adds its share.
                r.timed(Layer::HeadMid, Pass::Backward, 0, |be| {
                    be.global_avg_backward(at(dacts, p.head_map), at(dacts, p.cls_mid), &gpool(p.head_map))
                })?;
                r.conv_back(Layer::HeadMid, Dx::Add, p.head_map, p.dec_up[0], &t.center_head, false)?;
            }
            r.deconv_back(Layer::DecUp(d), p.dec_up[d], p.dec_conv[d], deconv)?;
            let input = if d == 0 { p.pool[4] } else { p.cat[5 - d] };
            r.conv_back(Layer::DecConv(d), Dx::Write, p.dec_conv[d], input, conv, true)?;
        }
        for b in (0..5).rev() {
            let block_out = p.enc[encoder_index(b, BLOCK_CONVS[b] - 1)];
            // The decoder wrote this block output's gradient; its pool adds.
            r.timed(Layer::Pool(b), Pass::Backward, 0, |be| {
                let mp = maxpool(p.pool[b], block_out);
                be.maxpool_backward(at(dacts, block_out), at(dacts, p.pool[b]), at(acts, block_out), &mp)
            })?;
            for j in (0..BLOCK_CONVS[b]).rev() {
                let i = encoder_index(b, j);
                let (x, dx) = match (j, b) {
                    (0, 0) => (p.input, if input_grad { Dx::Write } else { Dx::Skip }),
                    (0, _) => (p.pool[b - 1], Dx::Write),
                    _ => (p.enc[i - 1], Dx::Write),
                };
                r.conv_back(Layer::Enc(b, j), dx, p.enc[i], x, &t.encoder[i], true)?;
            }
        }
        Ok(parts)
    }
}

/// The position of conv `j` of encoder block `b` among the 13 encoder convolutions
/// (`plan.enc`, `table.encoder`).
fn encoder_index(b: usize, j: usize) -> usize {
    BLOCK_CONVS[..b].iter().sum::<usize>() + j
}

/// One pass in progress: the model, the backend, the buffers and the observer.
struct Run<'a, B: Backend> {
    model: &'a UNet16<B>,
    be: &'a B,
    ws: &'a Workspace<B>,
    hook: &'a mut dyn LayerHook,
}

impl<B: Backend> Run<'_, B> {
    /// Runs `f` between the hook's `begin` and `end`.
    fn timed<T>(&mut self, layer: Layer, pass: Pass, macs: usize, f: impl FnOnce(&B) -> Result<T>) -> Result<T> {
        self.hook.begin(layer, pass, macs);
        let out = f(self.be)?;
        self.hook.end(layer, pass);
        Ok(out)
    }

    fn conv(&mut self, layer: Layer, y: View, x: View, l: &LayerParams, relu: bool) -> Result<()> {
        let cp = conv_params(y, x, l, relu)?;
        let (acts, prm) = (&self.ws.acts, &self.model.params);
        self.timed(layer, Pass::Forward, cp.macs(), |be| {
            be.conv2d_forward(at(acts, y), at(acts, x), At::new(prm, l.weight.off), At::new(prm, l.bias.off), &cp)
        })
    }

    fn conv_back(&mut self, layer: Layer, dx: Dx, y: View, x: View, l: &LayerParams, relu: bool) -> Result<()> {
        let cp = conv_params(y, x, l, relu)?;
        let (acts, dacts, g, prm) = (&self.ws.acts, &self.ws.dacts, &self.model.grads, &self.model.params);
        // The weight gradient costs a forward's MACs, the input gradient another.
        let macs = cp.macs() * if dx == Dx::Skip { 1 } else { 2 };
        self.timed(layer, Pass::Backward, macs, |be| {
            be.conv2d_backward(
                grad_in(dx, dacts, x),
                At::new(g, l.weight.off),
                At::new(g, l.bias.off),
                at(dacts, y),
                at(acts, y),
                at(acts, x),
                At::new(prm, l.weight.off),
                &cp,
            )
        })
    }

    fn deconv(&mut self, layer: Layer, y: View, x: View, l: &LayerParams) -> Result<()> {
        let dp = deconv_params(y, x, l)?;
        let (acts, prm) = (&self.ws.acts, &self.model.params);
        self.timed(layer, Pass::Forward, dp.macs(), |be| {
            be.deconv_forward(at(acts, y), at(acts, x), At::new(prm, l.weight.off), At::new(prm, l.bias.off), &dp)
        })
    }

    fn deconv_back(&mut self, layer: Layer, y: View, x: View, l: &LayerParams) -> Result<()> {
        let dp = deconv_params(y, x, l)?;
        let (acts, dacts, g, prm) = (&self.ws.acts, &self.ws.dacts, &self.model.grads, &self.model.params);
        self.timed(layer, Pass::Backward, 2 * dp.macs(), |be| {
            be.deconv_backward(
                GradIn::Write(at(dacts, x)),
                At::new(g, l.weight.off),
                At::new(g, l.bias.off),
                at(dacts, y),
                at(acts, y),
                at(acts, x),
                At::new(prm, l.weight.off),
                &dp,
            )
        })
    }

    fn maxpool(&mut self, layer: Layer, y: View, x: View) -> Result<()> {
        let acts = &self.ws.acts;
        self.timed(layer, Pass::Forward, 0, |be| be.maxpool_forward(at(acts, y), at(acts, x), &maxpool(y, x)))
    }
}

fn at<B: Backend>(buf: &B::Buf, v: View) -> At<'_, B> {
    At::new(buf, v.off)
}
fn grad_in<B: Backend>(dx: Dx, dacts: &B::Buf, x: View) -> GradIn<'_, B> {
    match dx {
        Dx::Skip => GradIn::Skip,
        Dx::Write => GradIn::Write(at(dacts, x)),
        Dx::Add => GradIn::Add(at(dacts, x)),
    }
}

fn conv_params(y: View, x: View, l: &LayerParams, relu: bool) -> Result<Conv2dParams> {
    let ParamKind::Conv { r, c, k } = l.weight.kind else {
        return Err(Error::shape(&l.weight.name, "a conv weight", format!("{:?}", l.weight.kind)));
    };
    if c != x.c || k != y.c || (x.n, x.h, x.w) != (y.n, y.h, y.w) {
        return Err(Error::shape(&l.weight.name, format!("{c}→{k} channels"), format!("{x:?} → {y:?}")));
    }
    Ok(Conv2dParams { n: x.n, h: x.h, w: x.w, c, k, r, relu, x_pitch: x.pitch, y_pitch: y.pitch })
}

fn deconv_params(y: View, x: View, l: &LayerParams) -> Result<DeconvParams> {
    let ParamKind::Deconv { c, k } = l.weight.kind else {
        return Err(Error::shape(&l.weight.name, "a deconv weight", format!("{:?}", l.weight.kind)));
    };
    if c != x.c || k != y.c || (x.n, 2 * x.h, 2 * x.w) != (y.n, y.h, y.w) {
        return Err(Error::shape(&l.weight.name, format!("{c}→{k} channels, 2x up"), format!("{x:?} → {y:?}")));
    }
    Ok(DeconvParams { n: x.n, h: x.h, w: x.w, c, k, relu: true, x_pitch: x.pitch, y_pitch: y.pitch })
}

fn maxpool(y: View, x: View) -> MaxPoolParams {
    MaxPoolParams { n: x.n, h: x.h, w: x.w, c: x.c, x_pitch: x.pitch, y_pitch: y.pitch }
}

fn gpool(x: View) -> GlobalPoolParams {
    GlobalPoolParams { n: x.n, h: x.h, w: x.w, c: x.c, x_pitch: x.pitch }
}

//! UNet16 forward and backward, written out layer by layer (no autograd tape).
//!
//! The model holds the flat parameter and parameter-gradient buffers; a
//! [`Workspace`] holds the activation arena, its gradient twin and the targets for
//! one batch shape. The order of the backward pass matters where a tensor has two
//! consumers (each encoder block's output feeds its pool and the decoder; the center
//! feeds dec5 and the middle head): the consumer listed first in the backward pass
//! writes the gradient, the second adds to it.

use super::config::UNetConfig;
use super::params::{LayerParams, ParamKind, ParamTable};
use super::plan::{Plan, View, BLOCK_CONVS};
use crate::backend::{
    At, Backend, Conv2dParams, DeconvParams, GlobalPoolParams, GradIn, LossParams, LossParts, MaxPoolParams,
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
    /// Their gradients, same offsets.
    pub grads: B::Buf,
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
        let table = ParamTable::new(&cfg);
        if flat.len() != table.len {
            return Err(Error::shape("UNet16 parameters", table.len, flat.len()));
        }
        let params = be.alloc(table.len)?;
        be.upload(&params, 0, flat)?;
        let grads = be.alloc(table.len)?;
        Ok(UNet16 { cfg, table, params, grads })
    }

    /// Buffers for batches of `n` images of `h`×`w`.
    pub fn workspace(&self, be: &B, n: usize, h: usize, w: usize) -> Result<Workspace<B>> {
        let plan = Plan::new(&self.cfg, n, h, w)?;
        Ok(Workspace {
            acts: be.alloc(plan.len)?,
            dacts: be.alloc(plan.len)?,
            target: be.alloc(n * h * w * self.cfg.classes)?,
            plan,
        })
    }

    /// Forward pass: from `plan.input` to the mask logits and both heads.
    pub fn forward(&self, be: &B, ws: &Workspace<B>) -> Result<()> {
        let p = &ws.plan;
        let t = &self.table;
        // Encoder: VGG16 blocks, each but the last followed by its pool.
        let mut x = p.input;
        let mut i = 0;
        for b in 0..5 {
            for _ in 0..BLOCK_CONVS[b] {
                self.conv(be, ws, p.enc[i], x, &t.encoder[i], true)?;
                x = p.enc[i];
                i += 1;
            }
            self.maxpool(be, ws, p.pool[b], x)?;
            x = p.pool[b];
        }
        // Decoder: conv3x3+ReLU, deconv+ReLU into the next concatenated tensor.
        for (d, (conv, deconv)) in t.decoder.iter().enumerate() {
            let input = if d == 0 { p.pool[4] } else { p.cat[5 - d] };
            self.conv(be, ws, p.dec_conv[d], input, conv, true)?;
            self.deconv(be, ws, p.dec_up[d], p.dec_conv[d], deconv)?;
        }
        self.conv(be, ws, p.dec1, p.cat[0], &t.dec1, true)?;
        self.conv(be, ws, p.mask_logits, p.dec1, &t.final_conv, false)?;
        // Heads: 1x1 conv + global average on the center, global max on the masks.
        self.conv(be, ws, p.head_map, p.dec_up[0], &t.center_head, false)?;
        let acts = &ws.acts;
        be.global_avg_forward(at(acts, p.cls_mid), at(acts, p.head_map), &gpool(p.head_map))?;
        be.global_max_forward(at(acts, p.cls_last), at(acts, p.mask_logits), &gpool(p.mask_logits))
    }

    /// Loss against `ws.target` and the backward pass: every parameter gradient into
    /// `self.grads`, and the input image's gradient into the gradient arena when
    /// `input_grad` is set. Call after [`UNet16::forward`].
    pub fn backward(&self, be: &B, ws: &Workspace<B>, input_grad: bool) -> Result<LossParts> {
        let p = &ws.plan;
        let t = &self.table;
        let (acts, dacts) = (&ws.acts, &ws.dacts);
        let m = p.mask_logits;
        let lp = LossParams { n: m.n, h: m.h, w: m.w, k: m.c };
        let parts = be.loss(
            at(dacts, m),
            at(dacts, p.cls_mid),
            at(dacts, p.cls_last),
            at(acts, m),
            at(acts, p.cls_mid),
            at(acts, p.cls_last),
            At::new(&ws.target, 0),
            &lp,
        )?;
        be.global_max_backward(at(dacts, m), at(dacts, p.cls_last), at(acts, m), &gpool(m))?;
        self.conv_back(be, ws, Dx::Write, m, p.dec1, &t.final_conv, false)?;
        self.conv_back(be, ws, Dx::Write, p.dec1, p.cat[0], &t.dec1, true)?;
        for (d, (conv, deconv)) in t.decoder.iter().enumerate().rev() {
            if d == 0 {
                // The center's output also feeds the middle head; dec5 wrote its
                // gradient, the head adds its share.
                be.global_avg_backward(at(dacts, p.head_map), at(dacts, p.cls_mid), &gpool(p.head_map))?;
                self.conv_back(be, ws, Dx::Add, p.head_map, p.dec_up[0], &t.center_head, false)?;
            }
            self.deconv_back(be, ws, p.dec_up[d], p.dec_conv[d], deconv)?;
            let input = if d == 0 { p.pool[4] } else { p.cat[5 - d] };
            self.conv_back(be, ws, Dx::Write, p.dec_conv[d], input, conv, true)?;
        }
        let mut i = 13;
        for b in (0..5).rev() {
            let block_out = p.enc[i - 1];
            // The decoder wrote this block output's gradient; its pool adds.
            be.maxpool_backward(at(dacts, block_out), at(dacts, p.pool[b]), at(acts, block_out), &maxpool(p.pool[b], block_out))?;
            for j in (0..BLOCK_CONVS[b]).rev() {
                i -= 1;
                let (x, dx) = match (j, b) {
                    (0, 0) => (p.input, if input_grad { Dx::Write } else { Dx::Skip }),
                    (0, _) => (p.pool[b - 1], Dx::Write),
                    _ => (p.enc[i - 1], Dx::Write),
                };
                self.conv_back(be, ws, dx, p.enc[i], x, &t.encoder[i], true)?;
            }
        }
        Ok(parts)
    }

    fn conv(&self, be: &B, ws: &Workspace<B>, y: View, x: View, l: &LayerParams, relu: bool) -> Result<()> {
        let cp = conv_params(y, x, l, relu)?;
        let (acts, prm) = (&ws.acts, &self.params);
        be.conv2d_forward(at(acts, y), at(acts, x), At::new(prm, l.weight.off), At::new(prm, l.bias.off), &cp)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_back(&self, be: &B, ws: &Workspace<B>, dx: Dx, y: View, x: View, l: &LayerParams, relu: bool) -> Result<()> {
        let cp = conv_params(y, x, l, relu)?;
        let (acts, dacts, g) = (&ws.acts, &ws.dacts, &self.grads);
        be.conv2d_backward(
            grad_in(dx, dacts, x),
            At::new(g, l.weight.off),
            At::new(g, l.bias.off),
            at(dacts, y),
            at(acts, y),
            at(acts, x),
            At::new(&self.params, l.weight.off),
            &cp,
        )
    }

    fn deconv(&self, be: &B, ws: &Workspace<B>, y: View, x: View, l: &LayerParams) -> Result<()> {
        let dp = deconv_params(y, x, l)?;
        let (acts, prm) = (&ws.acts, &self.params);
        be.deconv_forward(at(acts, y), at(acts, x), At::new(prm, l.weight.off), At::new(prm, l.bias.off), &dp)
    }

    fn deconv_back(&self, be: &B, ws: &Workspace<B>, y: View, x: View, l: &LayerParams) -> Result<()> {
        let dp = deconv_params(y, x, l)?;
        let (acts, dacts, g) = (&ws.acts, &ws.dacts, &self.grads);
        be.deconv_backward(
            GradIn::Write(at(dacts, x)),
            At::new(g, l.weight.off),
            At::new(g, l.bias.off),
            at(dacts, y),
            at(acts, y),
            at(acts, x),
            At::new(&self.params, l.weight.off),
            &dp,
        )
    }

    fn maxpool(&self, be: &B, ws: &Workspace<B>, y: View, x: View) -> Result<()> {
        be.maxpool_forward(at(&ws.acts, y), at(&ws.acts, x), &maxpool(y, x))
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

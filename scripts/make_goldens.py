#!/usr/bin/env python3
"""PyTorch golden fixtures for lesionseg's UNet16 multi-task model.

The model is the paper's (chvlyl/ISIC2018, after ternaus' UNet16 with
DecoderBlockV2(is_deconv=True)) plus its two classification heads, with every
channel count divided by ``--div`` (K = 5 attributes stays). ``--div 1`` is the
paper's model (32.2 M parameters); the committed fixtures use ``--div 8``.
Parameters use PyTorch's default initialisation (the modules are just
constructed, under ``torch.manual_seed(weight_seed)``), then rounded to float16:
the stored weights ARE the model the goldens come from.

Reference values are computed in float64 (``model.double()`` on the f16-rounded
weights and the f32 inputs) and stored as float32.

Screening. With random weights a ReLU input, a 2x2 max-pool window or the global
max head can sit within float32 rounding of its switch point; a correct f32
implementation that sums in another order then routes a gradient down the other
path and whole gradient tensors move by ~1e-4..1e-2. So every draw (weight seed,
input seed) is screened before it is accepted:
  1. float32 runs in four summation orders (NCHW with oneDNN, channels_last,
     oneDNN disabled (im2col + GEMM), oneDNN disabled on one thread) must agree
     with the float64 reference: every output max|d| <= --out-tol * max|ref|
     (default 1e-6) and every gradient ||d|| / ||ref|| <= --grad-tol (default
     5e-6). Both are tighter than the 1e-5 the Rust tests use, so a golden
     PyTorch itself only just meets is not accepted.
  2. direct check of switch points in the float64 run: for every ReLU input,
     min |x| / max|x| of the tensor; for every 2x2 max-pool window whose max is
     positive, (top1 - top2) / max of the tensor; for the global max head,
     (top1 - top2) / max|mask_logits| per (n, k). Each must be >= --gap-rel
     (default 1e-6). (Windows whose max is <= 0 pass no gradient: their inputs
     are ReLU zeros.) In addition, each gap must be >= --err-margin (default 5)
     times the largest deviation of that tensor seen in the float32 runs (those
     reach ~1e-6 of the tensor's scale in the deepest layers).
     A 1e-5 relative threshold is not usable: every draw has ~8-23 of its
     ~350-460 k switch points within 1e-5 of the scale (none of 72 draws was
     free of them), while ~20% have none within 1e-6.
  3. every bias gradient recomputed the naive way (the float64 gradient of the
     conv output rounded to f32 and summed in one sequential f32 loop over
     n, h, w) must stay within --seqsum-tol (default 1e-5) of the reference:
     near-cancelling sums make a golden fragile for simple implementations.
The weights are shared by all fixtures of one --div, so a weight seed is only
accepted when every fixture finds an accepted input seed (tried in order from
the default, up to --input-tries each); otherwise the next weight seed is tried.

Files (--div 8, default --out tests/fixtures):
  narrow_weights.safetensors   the model's state_dict as an nn.DataParallel
      checkpoint has it: every key prefixed ``module.``, the encoder.N.* keys AND
      their conv1.0 ... conv5.4 aliases (same values), float16.
  narrow_n2_64x64.safetensors, narrow_n1_64x96.safetensors,
  narrow_n1_64x64_widemax.safetensors (all float32):
      input [N,3,H,W], target_mask [N,5,H,W] in {0,1}, mask_logits [N,5,H,W],
      cls_mid_logits [N,5], cls_last_logits [N,5], loss, loss1, loss2, loss3
      (shape []), grad.<canonical parameter name> (PyTorch layout, no
      ``module.`` prefix, no conv aliases), grad.input [N,3,H,W].
  Each file's metadata records the seeds, --div and the torch version.
  n1_64x64_widemax: its randn input is nudged (widen_global_max) until every
      class's global max of mask_logits leads its runner-up by >= 3e-2 of
      max|mask_logits|, then screened like the others. In the other fixtures
      those leads are 1e-4..3e-2, within reach of bf16 rounding: where a bf16 run
      moves one, its gradients take another path (the global-max head sends a
      large share of every layer's gradient through that one pixel) and no bf16
      comparison of gradients means anything. This one keeps them comparable.
  narrow_<fixture>_bf16.safetensors, one per fixture above (float32
      holding PyTorch's bf16 results): the bf16 yardstick, PyTorch's own mixed
      precision on the same weights and inputs: the model in float32 (the
      f16-rounded weights), forward and loss under
      ``torch.autocast("cpu", dtype=torch.bfloat16)``, backward outside it, as
      PyTorch's AMP examples run it. Tensors ``bf16.<name>`` for every output,
      loss and gradient of the file beside it (not input/target_mask: those are
      the fp32 file's). How far these are from the fp32 goldens is how far a
      bf16 engine may be (tests/bf16.rs); with random weights the gradients are
      10-90% (relative L2) away while the outputs stay within ~1e-2.

Full width, for manual checks (not committed; 90 MB weights + 124 MB goldens,
~30 s per draw on 2 cores):
  python3 scripts/make_goldens.py --div 1 --accept-first   # -> /tmp/lesionseg-full/
      full_weights.safetensors, full_n2_64x64.safetensors (N=2, 64x64)
  The full model has ~3.7 M switch points at 64x64 (8x the narrow one); every
  draw tried had 10-21 of them within 1e-6 of their tensor's scale, so no draw
  passes screening and --accept-first writes the first one anyway, saying why
  (also in the file's metadata, key "screening"). Its float32 runs agreed with
  float64 (grads rel L2 <= 1.8e-6), but an implementation that sums in another
  order may flip one of those switch points: compare its gradients loosely.
  Other --div values write div<D>_* to /tmp/lesionseg-div<D>/.

--check-only: write nothing; reload the files in --out, recompute the float64
reference from the stored weights and inputs, compare with the stored values,
check the alias keys, and rerun the screening on the stored draw; recompute the
bf16 yardstick and compare it with the stored one. Exit status 1 on any failure
(a screening failure only warns with --accept-first).

--bf16-only: leave the weights and fp32 goldens in --out as they are; recompute
only the bf16 yardstick files from the stored weights and inputs (for a machine
where a full run would not reproduce the fp32 files bit for bit).

Loss (docs/ARCHITECTURE.md, section 2): t = target_mask, s = sigmoid(mask_logits);
  loss1 = mean BCEWithLogits(mask_logits, t) - log((sum s*t + 1e-15) /
          (sum s + sum t - sum s*t + 1e-15))   (sums over the whole batch)
  y[n,k] = (t[n,k].amax() > 0.5)
  loss2 = mean BCEWithLogits(cls_mid_logits, y); loss3 = same, cls_last_logits
  loss = loss1 + 0.5 * loss2 + 0.5 * loss3

Requirements: scripts/requirements-goldens.txt (torch, numpy, safetensors).
"""

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

# ---------------------------------------------------------------------------
# Default seeds. The search starts here: weight seeds upward from
# DEFAULT_WEIGHT_SEED[div]; for each fixture, input seeds upward from
# DEFAULT_INPUT_SEED[(div, fixture)]. The --div 8 defaults are the draw a search
# from weight seed 0 / input seeds 0 accepted (torch 2.15.0, x86-64 AVX-512 CPU):
# weight seed 0; n2_64x64 input seeds 0-6 and n1_64x96 input seeds 0-1 rejected
# (n1_64x64_widemax, added later with the same weights, accepted input seed 0).
# With them the default run accepts on its first try; should screening reject
# them on another machine, the search goes on and says so.
DEFAULT_WEIGHT_SEED = {8: 0, 1: 0}
DEFAULT_INPUT_SEED = {(8, "n2_64x64"): 7, (8, "n1_64x96"): 2, (8, "n1_64x64_widemax"): 0}
# ---------------------------------------------------------------------------

K = 5
NF = 32
EPS = 1e-15
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixtures_for(div):
    """(name, N, H, W) of the golden files written for a given --div. A name ending
    in ``_widemax`` has its input widened for bf16 (see widen_global_max)."""
    if div == 8:
        return [("n2_64x64", 2, 64, 64), ("n1_64x96", 1, 64, 96), ("n1_64x64_widemax", 1, 64, 64)]
    return [("n2_64x64", 2, 64, 64)]


# The widened fixture's global-max head: every (image, class) argmax leads its
# runner-up by at least this much of max|mask_logits|, ~6x the output error of
# PyTorch's bf16 autocast on these models (~5e-3), so no correct bf16 engine moves it.
WIDEMAX_GAP = 3e-2


def widen_global_max(model, x, min_gap=WIDEMAX_GAP, steps=200):
    """The input nudged (gradient ascent in float64, each step rounded to float32,
    values kept in [-3, 3]) until every (image, class) global max of mask_logits leads
    its runner-up by >= min_gap of max|mask_logits|. The global-max head sends its
    gradient to that one pixel; where bf16 rounding moves it, a bf16 run's gradients
    follow another path and cannot be compared with anyone's (the other fixtures'
    gaps are 1e-4..3e-2). Returns the float32 input."""
    m = copy.deepcopy(model).double()
    for p in m.parameters():
        p.requires_grad_(False)
    x = x.float()
    for _ in range(steps):
        xv = x.double().requires_grad_(True)
        ml = m(xv)[0]
        top = ml.flatten(2).topk(2, dim=-1).values
        gap = (top[..., 0] - top[..., 1]) / ml.abs().max().detach()
        if gap.min().item() >= min_gap:
            return x
        torch.clamp(gap, max=min_gap * 4 / 3).sum().backward()
        step = xv.grad / xv.grad.abs().max()
        x = (xv.detach() + 0.05 * step).clamp(-3, 3).float()
    sys.exit(f"widen_global_max: gap still below {min_gap} after {steps} steps")


def prefix_for(div):
    return {8: "narrow", 1: "full"}.get(div, f"div{div}")


def default_out(div):
    if div == 8:
        return os.path.join(REPO, "tests", "fixtures")
    if div == 1:
        return "/tmp/lesionseg-full"
    return f"/tmp/lesionseg-div{div}"


# --------------------------------------------------------------------------- model


class ConvRelu(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.conv(x))


class DecoderBlockV2(nn.Module):
    """ternaus DecoderBlockV2 with is_deconv=True."""

    def __init__(self, cin, cmid, cout):
        super().__init__()
        self.block = nn.Sequential(
            ConvRelu(cin, cmid),
            nn.ConvTranspose2d(cmid, cout, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.block(x)


class UNet16MultiTask(nn.Module):
    """The paper's multi-task UNet16, channel counts divided by `div`.

    ReLUs are not in-place (the paper's are; the arithmetic is the same) and the
    conv blocks reuse the encoder's own ReLU modules instead of one shared ReLU,
    so that hooks can tell them apart. Neither changes the state_dict."""

    VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

    def __init__(self, div=1, num_classes=K, num_filters=NF):
        super().__init__()
        if NF % div or 64 % div:
            raise ValueError(f"--div {div} must divide {NF}")
        c = lambda n: n // div  # noqa: E731
        nf = c(num_filters)
        layers, cin = [], 3
        for v in self.VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, c(v), 3, padding=1), nn.ReLU()]
                cin = c(v)
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = nn.Sequential(*layers)  # torchvision VGG16 `features` indices
        e = self.encoder
        self.conv1 = nn.Sequential(e[0], e[1], e[2], e[3])
        self.conv2 = nn.Sequential(e[5], e[6], e[7], e[8])
        self.conv3 = nn.Sequential(e[10], e[11], e[12], e[13], e[14], e[15])
        self.conv4 = nn.Sequential(e[17], e[18], e[19], e[20], e[21], e[22])
        self.conv5 = nn.Sequential(e[24], e[25], e[26], e[27], e[28], e[29])
        self.center = DecoderBlockV2(c(512), nf * 16, nf * 8)
        self.dec5 = DecoderBlockV2(c(512) + nf * 8, nf * 16, nf * 8)
        self.dec4 = DecoderBlockV2(c(512) + nf * 8, nf * 16, nf * 8)
        self.dec3 = DecoderBlockV2(c(256) + nf * 8, nf * 8, nf * 2)
        self.dec2 = DecoderBlockV2(c(128) + nf * 2, nf * 4, nf)
        self.dec1 = ConvRelu(c(64) + nf, nf)
        self.final = nn.Conv2d(nf, num_classes, kernel_size=1)
        self.center_Conv2d = nn.Conv2d(nf * 8, num_classes, kernel_size=1)
        self.num_classes = num_classes

    def forward(self, x):
        conv1 = self.conv1(x)
        conv2 = self.conv2(self.pool(conv1))
        conv3 = self.conv3(self.pool(conv2))
        conv4 = self.conv4(self.pool(conv3))
        conv5 = self.conv5(self.pool(conv4))
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        dec1 = self.dec1(torch.cat([dec2, conv1], 1))
        mask_logits = self.final(dec1)
        n = x.shape[0]
        cls_mid_logits = F.adaptive_avg_pool2d(self.center_Conv2d(center), 1).view(n, self.num_classes)
        cls_last_logits = F.adaptive_max_pool2d(mask_logits, 1).view(n, self.num_classes)
        return mask_logits, cls_mid_logits, cls_last_logits


def losses(mask_logits, cls_mid_logits, cls_last_logits, t):
    bce = F.binary_cross_entropy_with_logits(mask_logits, t)
    s = torch.sigmoid(mask_logits)
    inter = (s * t).sum()
    union = s.sum() + t.sum()
    loss1 = bce - torch.log((inter + EPS) / (union - inter + EPS))
    y = (t.amax(dim=(2, 3)) > 0.5).to(mask_logits.dtype)
    loss2 = F.binary_cross_entropy_with_logits(cls_mid_logits, y)
    loss3 = F.binary_cross_entropy_with_logits(cls_last_logits, y)
    loss = loss1 + 0.5 * loss2 + 0.5 * loss3
    return loss, loss1, loss2, loss3


def make_model(div, weight_seed):
    """Default-initialised model (seeded), parameters rounded to float16; float32."""
    torch.manual_seed(weight_seed)
    model = UNet16MultiTask(div)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def canonical_params(model):
    """(name, parameter) in registration order, aliases removed (encoder.N wins)."""
    return list(model.named_parameters())


def checkpoint_dict(model):
    """The state_dict as a DataParallel checkpoint: module.* keys, aliases kept, f16."""
    sd = model.state_dict()
    assert "conv1.0.weight" in sd and "conv5.4.bias" in sd and "encoder.28.weight" in sd
    return {f"module.{k}": v.detach().half().contiguous().clone() for k, v in sd.items()}


def load_checkpoint(model, path):
    """Load a DataParallel-style f16 file into `model` (f32); checks the aliases agree."""
    raw = load_file(path)
    sd = {}
    for k, v in raw.items():
        assert k.startswith("module."), k
        sd[k[len("module."):]] = v.float()
    model.load_state_dict(sd, strict=True)
    # load_state_dict copies every alias into the same tensor; make sure they agreed.
    own = model.state_dict()
    for k, v in sd.items():
        if not torch.equal(own[k], v):
            raise AssertionError(f"{path}: alias {k} differs from the tensor it aliases")
    return raw


# --------------------------------------------------------------------------- data


def make_inputs(n, h, w, seed):
    """randn images (like normalised RGB) and blob masks: a few random ellipses per
    channel, some channels empty; y = any(mask) has both 0s and 1s."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
    t = np.zeros((n, K, h, w), dtype=np.float32)
    while True:
        present = rng.random((n, K)) < 0.55
        if present.any() and not present.all():
            break
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for i in range(n):
        for k in range(K):
            if not present[i, k]:
                continue
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                ay, ax = rng.uniform(2.0, h / 4), rng.uniform(2.0, w / 4)
                th = rng.uniform(0, math.pi)
                dy, dx = yy - cy, xx - cx
                u = dx * math.cos(th) + dy * math.sin(th)
                v = -dx * math.sin(th) + dy * math.cos(th)
                t[i, k][(u / ax) ** 2 + (v / ay) ** 2 <= 1.0] = 1.0
            if t[i, k].max() == 0:  # ellipse fell outside: force one pixel blob
                t[i, k, h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = 1.0
    return torch.from_numpy(x), torch.from_numpy(t)


# --------------------------------------------------------------------------- runs


class Capture:
    """Forward pre-hooks on every ReLU and on the max pool: records their inputs."""

    def __init__(self, model):
        self.relu_in = {}
        self.pool_in = []
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, nn.ReLU):
                self.handles.append(m.register_forward_pre_hook(self._relu_hook(name)))
        self.handles.append(model.pool.register_forward_pre_hook(self._pool_hook))
        self.out_grad = {}  # conv module name -> dL/d(conv output), filled by backward
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                self.handles.append(m.register_forward_hook(self._grad_hook(name)))

    def _grad_hook(self, name):
        def hook(_m, _inp, out):
            if out.requires_grad:
                out.register_hook(lambda g: self.out_grad.__setitem__(name, g.detach().clone()))

        return hook

    def _relu_hook(self, name):
        def hook(_m, inp):
            self.relu_in[name] = inp[0].detach().clone().contiguous()

        return hook

    def _pool_hook(self, _m, inp):
        self.pool_in.append(inp[0].detach().clone().contiguous())

    def remove(self):
        for h in self.handles:
            h.remove()


def run(model, x, t, dtype, channels_last=False, mkldnn=True, threads=None, capture=False):
    """Forward + backward in `dtype`. Returns (outputs dict, grads dict, capture)."""
    m = copy.deepcopy(model).to(dtype)
    xi = x.to(dtype)
    ti = t.to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        xi = xi.contiguous(memory_format=torch.channels_last)
        ti = ti.contiguous(memory_format=torch.channels_last)
    xi = xi.clone().requires_grad_(True)
    cap = Capture(m) if capture else None
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            mask_logits, cls_mid, cls_last = m(xi)
            loss, loss1, loss2, loss3 = losses(mask_logits, cls_mid, cls_last, ti)
            loss.backward()
    finally:
        torch.set_num_threads(old_threads)
        if cap:
            cap.remove()
    outs = {
        "mask_logits": mask_logits.detach().contiguous(),
        "cls_mid_logits": cls_mid.detach().contiguous(),
        "cls_last_logits": cls_last.detach().contiguous(),
        "loss": loss.detach(),
        "loss1": loss1.detach(),
        "loss2": loss2.detach(),
        "loss3": loss3.detach(),
    }
    grads = {f"grad.{n}": p.grad.detach().contiguous() for n, p in canonical_params(m)}
    grads["grad.input"] = xi.grad.detach().contiguous()
    return outs, grads, cap


F32_VARIANTS = [
    ("f32 nchw onednn", dict(channels_last=False, mkldnn=True)),
    ("f32 channels_last", dict(channels_last=True, mkldnn=True)),
    ("f32 nchw no-onednn", dict(channels_last=False, mkldnn=False)),
    ("f32 no-onednn 1 thread", dict(channels_last=False, mkldnn=False, threads=1)),
]


def out_err(a, ref):
    """max|a-ref| / max|ref| (in f64)."""
    d = (a.double() - ref.double()).abs().max().item()
    s = ref.double().abs().max().item()
    return d / s if s > 0 else (0.0 if d == 0 else math.inf)


def rel_l2(a, ref):
    d = (a.double() - ref.double()).norm().item()
    s = ref.double().norm().item()
    return d / s if s > 0 else (0.0 if d == 0 else math.inf)


def window_top2(p):
    """For [N,C,H,W]: top-1 and top-2 of every 2x2 window (floor mode, as MaxPool2d)."""
    n, c, h, w = p.shape
    p = p[:, :, : h // 2 * 2, : w // 2 * 2]
    win = p.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    top = win.topk(2, dim=-1).values
    return top[..., 0], top[..., 1]


def switch_gaps(cap64, mask_logits64):
    """Relative gaps to the nearest switch point, per screened tensor (f64 run).
    Returns {name: (gap tensor (flat, >=0, relative to the tensor's scale), scale)}."""
    gaps = {}
    for name, x in cap64.relu_in.items():
        s = x.abs().max().item()
        gaps[f"relu {name}"] = ((x.abs() / s).flatten(), s)
    for i, p in enumerate(cap64.pool_in):
        s = p.abs().max().item()
        t1, t2 = window_top2(p)
        live = t1 > 0
        gaps[f"pool{i + 1}"] = (((t1 - t2)[live] / s).flatten(), s)
    s = mask_logits64.abs().max().item()
    flat = mask_logits64.flatten(2)
    top = flat.topk(2, dim=-1).values
    gaps["global max"] = (((top[..., 0] - top[..., 1]) / s).flatten(), s)
    return gaps


def screened_tensors_f32(cap32, mask_logits32):
    """Same tensors as switch_gaps, raw, from an f32 run (for the deviation margin)."""
    d = {f"relu {k}": v for k, v in cap32.relu_in.items()}
    for i, p in enumerate(cap32.pool_in):
        d[f"pool{i + 1}"] = p
    d["global max"] = mask_logits32
    return d


def run_autocast_bf16(model, x, t):
    """PyTorch's bf16 mixed precision as its users run it: the model in float32,
    forward and loss under CPU autocast (convolutions and transposed convolutions
    in bf16, f32 accumulation, bf16 activations), backward outside autocast.
    Returns (outputs dict, grads dict), every tensor float32."""
    m = copy.deepcopy(model).float()
    xi = x.float().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_logits, cls_mid, cls_last = m(xi)
        loss, loss1, loss2, loss3 = losses(mask_logits, cls_mid, cls_last, t.float())
    loss.backward()
    outs = {
        "mask_logits": mask_logits,
        "cls_mid_logits": cls_mid,
        "cls_last_logits": cls_last,
        "loss": loss,
        "loss1": loss1,
        "loss2": loss2,
        "loss3": loss3,
    }
    grads = {f"grad.{n}": p.grad for n, p in canonical_params(m)}
    grads["grad.input"] = xi.grad
    return to_f32(outs), to_f32(grads)


def bf16_yardstick(model, x, t, ref):
    """The autocast run on one fixture, its distance from the fp32 goldens `ref`
    printed per tensor. Returns ({"bf16.<name>": tensor}, metadata dict)."""
    outs, grads = run_autocast_bf16(model, x, t)
    again = dict(zip(("o", "g"), run_autocast_bf16(model, x, t)))
    repeatable = all(torch.equal(outs[k], again["o"][k]) for k in outs) and all(
        torch.equal(grads[k], again["g"][k]) for k in grads)
    got = dict(outs)
    got.update(grads)
    worst_out, worst_grad = (0.0, ""), (0.0, "")
    print("    bf16 autocast vs fp32 golden (outputs max|d|/max|ref|, losses |d|/|ref|, gradients rel L2):")
    for k in sorted(got):
        if k.startswith("grad."):
            e = rel_l2(got[k], ref[k])
            worst_grad = max(worst_grad, (e, k))
        else:
            e = out_err(got[k], ref[k])
            if not k.startswith("loss"):
                worst_out = max(worst_out, (e, k))
        print(f"      {k:40s} {e:.3e}")
    meta = {
        "yardstick": "PyTorch bf16 autocast on the CPU: the model in float32 (the f16-rounded weights), "
        "forward and loss under torch.autocast('cpu', dtype=torch.bfloat16), backward outside; "
        "bf16 values stored as float32",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "repeatable": "bitwise" if repeatable else "NO: two runs differed",
        "bf16_worst_output_err": f"{worst_out[0]:.3e} ({worst_out[1]})",
        "bf16_worst_grad_rel_l2": f"{worst_grad[0]:.3e} ({worst_grad[1]})",
    }
    print(f"    worst: output {meta['bf16_worst_output_err']}, gradient {meta['bf16_worst_grad_rel_l2']}; "
          f"two runs {meta['repeatable']}")
    return {f"bf16.{k}": v for k, v in got.items()}, meta


def bf16_path(out, prefix, name):
    return os.path.join(out, f"{prefix}_{name}_bf16.safetensors")


def write_bf16(out, prefix, fixture, model, x, t, ref, meta_common):
    """Writes the bf16 yardstick of one fixture beside its fp32 file; returns the path."""
    print(f"  {fixture}: bf16 yardstick")
    tensors, meta = bf16_yardstick(model, x, t, ref)
    path = bf16_path(out, prefix, fixture)
    save_safetensors(tensors, path, dict(meta_common, fp32_golden=f"{prefix}_{fixture}.safetensors", **meta))
    return path


def bf16_only(args):
    """Rewrites only the bf16 yardstick files, from the stored weights, inputs and goldens."""
    prefix = prefix_for(args.div)
    model = UNet16MultiTask(args.div)
    load_checkpoint(model, os.path.join(args.out, f"{prefix}_weights.safetensors"))
    written = []
    for name, _n, _h, _w in fixtures_for(args.div):
        path = os.path.join(args.out, f"{prefix}_{name}.safetensors")
        d = load_file(path)
        with safe_open(path, "pt") as f:
            seed = f.metadata()["weight_seed"]
        # The same metadata as a full run writes, so that both give the same bytes.
        meta_common = {"generator": "scripts/make_goldens.py", "torch": torch.__version__, "div": str(args.div),
                       "weight_seed": seed}
        written.append(write_bf16(args.out, prefix, name, model, d["input"], d["target_mask"], d, meta_common))
    print_contents(written)


def check_bf16(args, model, prefix, name, d, failures):
    """Recomputes the bf16 yardstick of one fixture and compares it with the stored file."""
    path = bf16_path(args.out, prefix, name)
    if not os.path.exists(path):
        failures.append(f"{path}: missing (make it with --bf16-only)")
        return
    stored = load_file(path)
    fresh, meta = bf16_yardstick(model, d["input"], d["target_mask"], d)
    if set(stored) != set(fresh):
        failures.append(f"{path}: tensor names differ: {sorted(set(stored) ^ set(fresh))}")
        return
    same = all(torch.equal(stored[k], fresh[k]) for k in fresh)
    worst = max(rel_l2(stored[k], fresh[k]) for k in fresh)
    print(f"{path}: stored vs recomputed bf16 {'bitwise equal' if same else f'worst rel L2 {worst:.2e}'} "
          f"(cpu capability {meta['cpu_capability']})")
    # Another CPU's bf16 kernels (AVX-512 BF16, AMX, or none) may round differently;
    # a yardstick that moved by more than its own bf16 rounding is a real change.
    if worst > 1e-2:
        failures.append(f"{path}: stored bf16 yardstick differs from the recomputed one ({worst:.2e})")


def evaluate(model, x, t, args):
    """Reference (f64) + screening of one draw. Returns (ok, ref_outs, ref_grads, stats)."""
    t0 = time.time()
    outs64, grads64, cap64 = run(model, x, t, torch.float64, capture=True)
    stats = {"reasons": []}
    # -- float32 in several summation orders
    ref64_raw = screened_tensors_f32(cap64, outs64["mask_logits"])
    worst_out, worst_grad, worst_grad_name, worst_out_name = 0.0, 0.0, "", ""
    dev = {k: 0.0 for k in ref64_raw}  # max abs deviation of screened tensors over variants
    per_variant = []
    for vname, kw in F32_VARIANTS:
        outs, grads, cap = run(model, x, t, torch.float32, capture=True, **kw)
        vo = max((out_err(outs[k], outs64[k]), k) for k in outs64)
        vg = max((rel_l2(grads[k], grads64[k]), k) for k in grads64)
        per_variant.append((vname, vo, vg))
        if vo[0] > worst_out:
            worst_out, worst_out_name = vo
        if vg[0] > worst_grad:
            worst_grad, worst_grad_name = vg
        raw32 = screened_tensors_f32(cap, outs["mask_logits"])
        for k in dev:
            dev[k] = max(dev[k], (raw32[k].double() - ref64_raw[k]).abs().max().item())
    stats["f32_out"] = (worst_out, worst_out_name)
    stats["f32_grad"] = (worst_grad, worst_grad_name)
    stats["per_variant"] = per_variant
    if worst_out > args.out_tol:
        stats["reasons"].append(f"f32 output {worst_out_name} off by {worst_out:.2e} of max")
    if worst_grad > args.grad_tol:
        stats["reasons"].append(f"f32 gradient {worst_grad_name} off by rel L2 {worst_grad:.2e}")
    # -- switch points
    gaps = switch_gaps(cap64, outs64["mask_logits"])
    min_rel = {}
    min_margin = (math.inf, "")
    for k, (g, s) in gaps.items():
        if g.numel() == 0:
            continue
        m = g.min().item()
        min_rel[k] = m
        dev_rel = dev[k] / s
        margin = m / dev_rel if dev_rel > 0 else math.inf
        if margin < min_margin[0]:
            min_margin = (margin, k)
    worst_gap = min(min_rel.items(), key=lambda kv: kv[1])
    stats["min_gap"] = worst_gap
    stats["min_gap_by_kind"] = {
        kind: min((v for k, v in min_rel.items() if k.startswith(kind)), default=math.inf)
        for kind in ("relu", "pool", "global max")
    }
    stats["n_below"] = {thr: sum(int((g < thr).sum()) for g, _ in gaps.values()) for thr in (1e-5, 1e-6, 1e-7)}
    stats["n_screened"] = sum(g.numel() for g, _ in gaps.values())
    stats["min_margin"] = min_margin
    stats["max_dev_rel"] = max((dev[k] / gaps[k][1], k) for k in gaps)
    if worst_gap[1] < args.gap_rel:
        stats["reasons"].append(f"switch gap {worst_gap[1]:.2e} < {args.gap_rel:.0e} at {worst_gap[0]}")
    if min_margin[0] < args.err_margin:
        stats["reasons"].append(
            f"switch gap only {min_margin[0]:.2g}x the f32 deviation at {min_margin[1]} (< {args.err_margin})"
        )
    # -- bias gradients as a naive implementation computes them: the f64 dL/d(conv
    # output), rounded to f32 and summed sequentially in f32 over (n, h, w). Even
    # without cancellation a plain loop over 8192 terms loses ~5e-6 (random walk of
    # roundings of the running sum); sums that cancel lose more. Accept only draws
    # where such an implementation still meets --seqsum-tol.
    worst_seq = (0.0, "", 0.0)
    for mname, g in cap64.out_grad.items():
        ref = g.sum(dim=(0, 2, 3))
        g32 = g.float().permute(1, 0, 2, 3).reshape(g.shape[1], -1).numpy()
        seq = torch.from_numpy(np.cumsum(g32, axis=1, dtype=np.float32)[:, -1].copy())
        err = rel_l2(seq, ref)
        if err > worst_seq[0]:
            cond = (g.abs().sum(dim=(0, 2, 3)).norm() / ref.norm()).item()
            worst_seq = (err, f"grad.{mname}.bias", cond)
    stats["seqsum_bias"] = worst_seq
    if worst_seq[0] > args.seqsum_tol:
        stats["reasons"].append(
            f"sequential f32 sum of {worst_seq[1]} off by rel L2 {worst_seq[0]:.2e} (cancellation {worst_seq[2]:.0f}x)"
        )
    stats["seconds"] = time.time() - t0
    ok = not stats["reasons"]
    return ok, outs64, grads64, stats


def fmt_stats(st):
    g = st["min_gap_by_kind"]
    return (
        f"f32 worst: outputs {st['f32_out'][0]:.2e} ({st['f32_out'][1]}), grads rel L2 {st['f32_grad'][0]:.2e} "
        f"({st['f32_grad'][1]}); min gaps: relu {g['relu']:.2e}, pool {g['pool']:.2e}, global max "
        f"{g['global max']:.2e}; #gaps<1e-5/1e-6/1e-7 of {st['n_screened']}: "
        f"{st['n_below'][1e-5]}/{st['n_below'][1e-6]}/{st['n_below'][1e-7]}; "
        f"max f32 dev {st['max_dev_rel'][0]:.1e} of scale ({st['max_dev_rel'][1]}); "
        f"min gap/dev {st['min_margin'][0]:.2g} ({st['min_margin'][1]}); worst sequential-f32-sum bias "
        f"grad rel L2 {st['seqsum_bias'][0]:.1e} ({st['seqsum_bias'][1]}, cancellation {st['seqsum_bias'][2]:.0f}x); "
        f"{st['seconds']:.1f}s"
    )


# --------------------------------------------------------------------------- files


def to_f32(d):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.float64: "F64"}


def save_safetensors(tensors, path, metadata):
    """safetensors writer with a byte-for-byte reproducible header (safetensors'
    own writer orders __metadata__ by a hash map, so reruns differ in bytes):
    keys sorted, tensors stored in name order, header padded to 8 bytes."""
    import json
    import struct

    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().tobytes() if t.numel() else b""  # little-endian on x86/ARM
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    assert sys.byteorder == "little"
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    back = load_file(path)  # round trip through the reference reader
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k].cpu()) for k in tensors), path


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def search(args):
    fixtures = fixtures_for(args.div)
    w_seed = args.weight_seed
    log = []
    for w_try in range(args.weight_tries):
        model = make_model(args.div, w_seed)
        print(f"weight seed {w_seed}: {sum(p.numel() for p in model.parameters()):,} parameters")
        accepted = {}
        for name, n, h, w in fixtures:
            i_seed = args.input_seed if args.input_seed is not None else DEFAULT_INPUT_SEED.get((args.div, name), 0)
            for _ in range(args.input_tries):
                x, t = make_inputs(n, h, w, i_seed)
                if name.endswith("_widemax"):
                    x = widen_global_max(model, x)
                ok, outs, grads, st = evaluate(model, x, t, args)
                log.append((w_seed, name, i_seed, ok, st))
                verdict = "ACCEPTED" if ok else "rejected: " + "; ".join(st["reasons"])
                if not ok and args.accept_first:
                    ok = True
                    verdict = "ACCEPTED ANYWAY (--accept-first), screening failed: " + "; ".join(st["reasons"])
                print(f"  {name} input seed {i_seed}: {verdict}\n      {fmt_stats(st)}")
                if ok:
                    accepted[name] = (i_seed, x, t, outs, grads, st)
                    break
                i_seed += 1
            if name not in accepted:
                print(f"  no input seed accepted for {name} with weight seed {w_seed}; next weight seed")
                break
        if len(accepted) == len(fixtures):
            return w_seed, model, accepted, log
        w_seed += 1
    sys.exit(f"no draw accepted after {args.weight_tries} weight seeds")


def write(args, w_seed, model, accepted, log):
    os.makedirs(args.out, exist_ok=True)
    prefix = prefix_for(args.div)
    meta_common = {
        "generator": "scripts/make_goldens.py",
        "torch": torch.__version__,
        "div": str(args.div),
        "weight_seed": str(w_seed),
    }
    written = []
    wpath = os.path.join(args.out, f"{prefix}_weights.safetensors")
    ck = checkpoint_dict(model)
    save_safetensors(ck, wpath, dict(meta_common, format="pt", note="DataParallel state_dict, f16"))
    written.append(wpath)
    for name, n, h, w in fixtures_for(args.div):
        i_seed, x, t, outs, grads, st = accepted[name]
        tensors = {"input": x.contiguous(), "target_mask": t.contiguous()}
        tensors.update(to_f32(outs))
        tensors.update(to_f32(grads))
        path = os.path.join(args.out, f"{prefix}_{name}.safetensors")
        meta = dict(
            meta_common,
            input_seed=str(i_seed),
            reference="float64 forward/backward on the f16-rounded weights and these f32 inputs",
            f32_worst_output_err=f"{st['f32_out'][0]:.3e}",
            f32_worst_grad_rel_l2=f"{st['f32_grad'][0]:.3e}",
            min_switch_gap=f"{st['min_gap'][1]:.3e}",
            screening="passed" if not st["reasons"] else "FAILED: " + "; ".join(st["reasons"]),
        )
        save_safetensors(tensors, path, meta)
        written.append(path)
        written.append(write_bf16(args.out, prefix, name, model, x, t, tensors, meta_common))
    print("\nwrote:")
    total = 0
    for p in written:
        sz = os.path.getsize(p)
        total += sz
        print(f"  {p}  {human(sz)} ({sz} bytes)")
    print(f"  total {human(total)} ({total} bytes)")
    rejected = sum(1 for e in log if not e[3])
    print(f"\ndraws tried: {len(log)}, rejected: {rejected}")
    for ws, name, iseed, ok, st in log:
        print(f"  weight {ws} {name} input {iseed}: {'accepted' if ok else 'rejected'}")
    print(f"accepted: weight seed {w_seed}; " + ", ".join(f"{k} input seed {v[0]}" for k, v in accepted.items()))
    defaults = (DEFAULT_WEIGHT_SEED.get(args.div, 0), {k: DEFAULT_INPUT_SEED.get((args.div, k), 0) for k in accepted})
    if (w_seed, {k: v[0] for k, v in accepted.items()}) != defaults:
        print(f"NOTE: the accepted seeds differ from the defaults {defaults} (screening on this machine "
              "rejected a default draw, or seeds were given on the command line)")
    print(f"params: {sum(p.numel() for p in model.parameters()):,}")
    print_contents(written)


def print_contents(paths):
    for p in paths:
        d = load_file(p)
        print(f"\n{os.path.basename(p)}: {len(d)} tensors")
        for k in sorted(d):
            print(f"  {k:40s} {str(d[k].dtype).replace('torch.', ''):8s} {list(d[k].shape)}")


def check_only(args):
    prefix = prefix_for(args.div)
    wpath = os.path.join(args.out, f"{prefix}_weights.safetensors")
    model = UNet16MultiTask(args.div)
    raw = load_checkpoint(model, wpath)
    failures = []
    expect_keys = {f"module.{k}" for k in model.state_dict()}
    if set(raw) != expect_keys:
        failures.append(f"{wpath}: keys differ: {sorted(set(raw) ^ expect_keys)}")
    if any(v.dtype != torch.float16 for v in raw.values()):
        failures.append(f"{wpath}: not all float16")
    print(f"{wpath}: {len(raw)} tensors, {sum(p.numel() for p in model.parameters()):,} parameters, aliases agree")
    for name, n, h, w in fixtures_for(args.div):
        path = os.path.join(args.out, f"{prefix}_{name}.safetensors")
        d = load_file(path)
        x, t = d["input"], d["target_mask"]
        assert list(x.shape) == [n, 3, h, w] and list(t.shape) == [n, K, h, w], path
        ok, outs, grads, st = evaluate(model, x, t, args)
        want = dict(to_f32(outs))
        want.update(to_f32(grads))
        want["input"], want["target_mask"] = x, t
        if set(d) != set(want):
            failures.append(f"{path}: tensor names differ: {sorted(set(d) ^ set(want))}")
        worst = 0.0
        for k in want:
            if k in d:
                if d[k].dtype != torch.float32 or d[k].shape != want[k].shape:
                    failures.append(f"{path}: {k} is {d[k].dtype} {list(d[k].shape)}")
                    continue
                worst = max(worst, rel_l2(d[k], want[k]))
        print(f"{path}: stored vs recomputed f64 worst rel L2 {worst:.2e}; screening "
              f"{'passes' if ok else 'FAILS: ' + '; '.join(st['reasons'])}\n    {fmt_stats(st)}")
        if worst > 1e-7:
            failures.append(f"{path}: stored values differ from the recomputed reference ({worst:.2e})")
        if not ok and not args.accept_first:
            failures.append(f"{path}: screening fails: {st['reasons']}")
        check_bf16(args, model, prefix, name, d, failures)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("\ncheck-only: all good")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--div", type=int, default=8, help="divide every channel count by this (1 = the paper's model)")
    ap.add_argument("--out", default=None, help="output dir (default: tests/fixtures for --div 8, "
                    "/tmp/lesionseg-full for --div 1, /tmp/lesionseg-div<D> otherwise)")
    ap.add_argument("--weight-seed", type=int, default=None, help="first weight seed to try")
    ap.add_argument("--input-seed", type=int, default=None, help="first input seed to try (every fixture)")
    ap.add_argument("--weight-tries", type=int, default=50)
    ap.add_argument("--input-tries", type=int, default=40)
    ap.add_argument("--out-tol", type=float, default=1e-6,
                    help="f32 runs: accept if every output has max|d| <= this * max|ref|")
    ap.add_argument("--grad-tol", type=float, default=5e-6,
                    help="f32 runs: accept if every gradient has ||d|| / ||ref|| <= this")
    ap.add_argument("--seqsum-tol", type=float, default=1e-5,
                    help="accept if every bias gradient, summed sequentially in f32 from the f64 "
                    "output gradient, has ||d|| / ||ref|| <= this")
    ap.add_argument("--gap-rel", type=float, default=1e-6,
                    help="min switch-point gap relative to the tensor's max |value|")
    ap.add_argument("--err-margin", type=float, default=5.0,
                    help="min switch-point gap as a multiple of the largest f32 deviation of that tensor")
    ap.add_argument("--accept-first", action="store_true",
                    help="write the first draw even if screening rejects it (reported, and recorded in "
                    "the file's metadata); for --div 1, where ~8x more switch points make a clean draw rare")
    ap.add_argument("--check-only", action="store_true", help="verify the files in --out, write nothing")
    ap.add_argument("--bf16-only", action="store_true",
                    help="rewrite only the bf16 yardstick files in --out from the stored weights, inputs and goldens")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.out is None:
        args.out = default_out(args.div)
    if args.weight_seed is None:
        args.weight_seed = DEFAULT_WEIGHT_SEED.get(args.div, 0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, "
          f"div {args.div}, out {args.out}, gap-rel {args.gap_rel:.0e}, err-margin {args.err_margin}")
    if args.check_only:
        check_only(args)
        return
    if args.bf16_only:
        bf16_only(args)
        return
    w_seed, model, accepted, log = search(args)
    write(args, w_seed, model, accepted, log)


if __name__ == "__main__":
    main()

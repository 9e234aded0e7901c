#!/usr/bin/env python3
"""PyTorch reference for `lesionseg profile`: the same model, loss, optimizer and
random data, measured the same way and printed in the same table (or JSON).

The model is the paper's multi-task UNet16 as scripts/make_goldens.py defines it
(ternaus UNet16 + DecoderBlockV2(is_deconv=True) + the two heads; parameter names
match its state_dict), with every channel count scaled by --width exactly as
lesionseg's `UNetConfig::scaled` does (round, at least 1). Its forward is written
as a list of named stages - enc1_1, enc1_2, pool1, ..., center_conv, center_up,
head_mid, dec5_conv, ..., dec1, final, head_last - the same decomposition as
lesionseg's `Layer`, so the per-layer rows line up.

What is measured (as lesionseg's src/profile.rs does):
  1. the peak: a 2048^3 (CPU) or 8192^3 (GPU) matmul in the mode's precision,
     best of 5 (or --peak-gflops, e.g. lesionseg's, for a common reference);
  2. --warmup untimed training steps, then --steps timed training steps
     (zero_grad, forward, loss, backward, Adam lr 1e-3) and --steps timed
     inference passes (inference_mode), each fenced (cuda synchronize);
  3. per layer (not under torch.compile): --steps more steps run stage by stage,
     each stage's input detached into a leaf, each stage timed forward and then,
     in reverse order, backward (torch.autograd.backward of its output with the
     gradient its consumers accumulated in the leaf), between two marks (CUDA
     events on a GPU, read after the step; the wall clock on the CPU), as
     lesionseg's per-layer marks are; medians over the steps. The
     loss's forward goes in its forward column (lesionseg fuses value and gradient
     into one op, which it counts as backward); `adam` is optimizer.step().
     Concatenations are inside the decoder convs' rows (lesionseg has none).

Modes (--modes, comma separated; default fp32 on the CPU, all GPU modes on a GPU):
  fp32     plain float32, NCHW. On a GPU with TF32 off (matmul and cuDNN).
  fp32-cl  float32, channels_last (oneDNN's fastest CPU layout; lesionseg is NHWC).
  tf32     GPU: float32 with TF32 on.
  bf16     bf16 autocast + channels_last (+ cudnn.benchmark on a GPU).
  compile  torch.compile of the model (GPU: on top of bf16; CPU: fp32, needs a C++
           compiler and takes minutes to compile); no per-layer table.
On a GPU cudnn.benchmark is on in every mode (the strongest eager bar).

  python3 bench/pytorch_reference.py --device cpu --size 256 --batch-size 1 --threads 2
  python3 bench/pytorch_reference.py --device cuda --size 512 --batch-size 8 --json
"""

import argparse
import contextlib
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

K = 5
NF = 32
EPS = 1e-15
BLOCK_CONVS = [2, 2, 3, 3, 3]
DEC = ["center", "dec5", "dec4", "dec3", "dec2"]


# --------------------------------------------------------------------------- model


class ConvRelu(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)


class DecoderBlockV2(nn.Module):
    """ternaus DecoderBlockV2(is_deconv=True): conv3x3+ReLU, deconv 4x4/s2/p1+ReLU."""

    def __init__(self, cin, cmid, cout):
        super().__init__()
        self.block = nn.Sequential(ConvRelu(cin, cmid), nn.ConvTranspose2d(cmid, cout, 4, stride=2, padding=1), nn.ReLU())


class UNet16MultiTask(nn.Module):
    """The paper's model with widths scaled like lesionseg's UNetConfig::scaled.
    Parameter names are make_goldens.py's (encoder.N = torchvision VGG16 features)."""

    def __init__(self, width=1.0, num_classes=K):
        super().__init__()
        s = lambda c: max(1, round(c * width))  # noqa: E731  (Rust: (c*f).round().max(1))
        enc = [s(c) for c in (64, 128, 256, 512, 512)]
        dec_mid = [s(c) for c in (NF * 16, NF * 16, NF * 16, NF * 8, NF * 4)]
        dec_out = [s(c) for c in (NF * 8, NF * 8, NF * 8, NF * 2, NF)]
        layers, cin = [], 3
        for b, convs in enumerate(BLOCK_CONVS):
            for _ in range(convs):
                layers += [nn.Conv2d(cin, enc[b], 3, padding=1), nn.ReLU()]
                cin = enc[b]
            layers.append(nn.MaxPool2d(2, 2))
        self.encoder = nn.Sequential(*layers)
        dec_in = [enc[4]] + [dec_out[i - 1] + enc[5 - i] for i in range(1, 5)]
        for i, name in enumerate(DEC):
            setattr(self, name, DecoderBlockV2(dec_in[i], dec_mid[i], dec_out[i]))
        self.dec1 = ConvRelu(dec_out[4] + enc[0], s(NF))
        self.final = nn.Conv2d(s(NF), num_classes, 1)
        self.center_Conv2d = nn.Conv2d(dec_out[0], num_classes, 1)
        self.stages = self._stages()

    def _stages(self):
        """[(name, input names, fn, fwd MACs from (input shapes, output shape), input is the image)]"""
        convs = [m for m in self.encoder if isinstance(m, nn.Conv2d)]
        conv_macs = lambda conv: lambda _ins, out: out.numel() * conv.in_channels * conv.kernel_size[0] ** 2  # noqa
        deconv_macs = lambda dc: lambda _ins, out: out.numel() * dc.in_channels * 4  # noqa: E731 (4 live taps)
        relu_conv = lambda conv: lambda *xs: F.relu(conv(torch.cat(xs, 1) if len(xs) > 1 else xs[0]))  # noqa
        st, x, i, skips = [], "input", 0, []
        for b, n in enumerate(BLOCK_CONVS):
            for j in range(n):
                name = f"enc{b + 1}_{j + 1}"
                st.append((name, [x], relu_conv(convs[i]), conv_macs(convs[i])))
                x, i = name, i + 1
            skips.append(x)
            st.append((f"pool{b + 1}", [x], lambda t: F.max_pool2d(t, 2, 2), None))
            x = f"pool{b + 1}"
        for d, name in enumerate(DEC):
            blk = getattr(self, name).block
            ins = [x] if d == 0 else [x, skips[5 - d]]
            st.append((f"{name}_conv", ins, relu_conv(blk[0].conv), conv_macs(blk[0].conv)))
            st.append((f"{name}_up", [f"{name}_conv"], lambda t, dc=blk[1]: F.relu(dc(t)), deconv_macs(blk[1])))
            x = f"{name}_up"
            if d == 0:
                head = lambda t: F.adaptive_avg_pool2d(self.center_Conv2d(t), 1).flatten(1)  # noqa: E731
                st.append(("head_mid", [x], head, lambda ins, _o: ins[0].numel() * K))  # 1x1 conv C -> K
        st.append(("dec1", [x, skips[0]], relu_conv(self.dec1.conv), conv_macs(self.dec1.conv)))
        st.append(("final", ["dec1"], self.final, conv_macs(self.final)))
        st.append(("head_last", ["final"], lambda t: F.adaptive_max_pool2d(t, 1).flatten(1), None))
        return st

    def forward(self, x):
        vals = {"input": x}
        for name, ins, fn, _ in self.stages:
            vals[name] = fn(*[vals[i] for i in ins])
        return vals["final"], vals["head_mid"], vals["head_last"]


def losses(mask_logits, cls_mid, cls_last, t):
    """The loss of docs/ARCHITECTURE.md, section 2 (scripts/make_goldens.py), computed in float32."""
    mask_logits, cls_mid, cls_last = mask_logits.float(), cls_mid.float(), cls_last.float()
    bce = F.binary_cross_entropy_with_logits(mask_logits, t)
    s = torch.sigmoid(mask_logits)
    inter = (s * t).sum()
    loss1 = bce - torch.log((inter + EPS) / (s.sum() + t.sum() - inter + EPS))
    y = (t.amax(dim=(2, 3)) > 0.5).float()
    loss2 = F.binary_cross_entropy_with_logits(cls_mid, y)
    loss3 = F.binary_cross_entropy_with_logits(cls_last, y)
    return loss1 + 0.5 * loss2 + 0.5 * loss3


def random_batch(n, size, seed, device):
    """Inputs uniform in +-2; per (image, attribute) a random rectangle or nothing
    one time in three (as lesionseg's Trainer)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 4 - 2
    t = torch.zeros(n, K, size, size)
    for i in range(n):
        for k in range(K):
            if torch.randint(0, 3, (1,), generator=g).item() == 0:
                continue
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(1, size // 2 + 1, (2,), generator=g).tolist()
            t[i, k, y0 : y0 + h, x0 : x0 + w] = 1
    return x.to(device), t.to(device)


# --------------------------------------------------------------------------- timing


class Mode:
    def __init__(self, name, device):
        self.name, self.device = name, device
        gpu = device.type == "cuda"
        if name not in ("fp32", "fp32-cl", "tf32", "bf16", "compile"):
            raise SystemExit(f"unknown mode {name}: use fp32, fp32-cl, tf32, bf16 or compile")
        if name == "tf32" and not gpu:
            raise SystemExit(f"mode {name} needs a GPU")
        self.channels_last = name in ("fp32-cl", "bf16") or (name == "compile" and gpu)
        self.bf16 = name == "bf16" or (name == "compile" and gpu)
        self.compile = name == "compile"
        self.tf32 = name == "tf32"

    def setup(self):
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cudnn.benchmark = True

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_peak(mode, device):
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if mode.bf16 else torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for rep in range(6):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if rep:
            best = min(best, time.perf_counter() - t0)
    what = "tf32" if mode.tf32 else str(dtype).replace("torch.", "")
    return 2 * n**3 / best / 1e9, f"torch.mm {what} {n}x{n}x{n}, best of 5"


class Marks:
    """Marks in the device's queue of work, as lesionseg's Backend::mark: CUDA events
    on a GPU (read back once the step is over, so timing adds no wait between
    stages), the wall clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.pending = []  # (table, name, start, end)

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def add(self, table, name, start, end):
        self.pending.append((table, name, start, end))

    def finish_step(self):
        """Files the step's times (seconds) into their tables."""
        if self.cuda:
            torch.cuda.synchronize()
        for table, name, start, end in self.pending:
            secs = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            table.setdefault(name, []).append(secs)
        self.pending = []


def profile_layers(model, opt, x, t, mode, steps):
    """Per-stage forward and backward times (ms), medians over `steps` steps."""
    marks = Marks(x.device)
    fwd, bwd, macs = {}, {}, {}
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        outs, leaves = {}, {"input": x}
        with mode.autocast():
            for name, ins, fn, mac in model.stages:
                args = [leaves[i] for i in ins]
                t0 = marks.mark()
                out = fn(*args)
                marks.add(fwd, name, t0, marks.mark())
                if name not in macs:
                    f = mac(args, out) if mac else 0
                    macs[name] = (f, f if ins == ["input"] else 2 * f)
                outs[name] = out
                leaves[name] = out.detach().requires_grad_()
            t0 = marks.mark()
            loss = losses(leaves["final"], leaves["head_mid"], leaves["head_last"], t)
            marks.add(fwd, "loss", t0, marks.mark())
        t0 = marks.mark()
        loss.backward()
        marks.add(bwd, "loss", t0, marks.mark())
        for name, _ins, _fn, _mac in reversed(model.stages):
            t0 = marks.mark()
            torch.autograd.backward(outs[name], leaves[name].grad)
            marks.add(bwd, name, t0, marks.mark())
        t0 = marks.mark()
        opt.step()
        marks.add(bwd, "adam", t0, marks.mark())
        marks.finish_step()
    order = [s[0] for s in model.stages]
    order.insert(order.index("center_up") + 1, order.pop(order.index("head_mid")))
    order += ["loss", "adam"]
    med = lambda d, n: statistics.median(d[n]) * 1e3 if n in d else 0.0  # noqa: E731
    return [
        dict(name=n, forward_ms=med(fwd, n), backward_ms=med(bwd, n), forward_macs=macs.get(n, (0, 0))[0],
             backward_macs=macs.get(n, (0, 0))[1])
        for n in order
    ]


def run_mode(args, mode, device):
    mode.setup()
    torch.manual_seed(args.seed)
    model = UNet16MultiTask(args.width).to(device)
    x, t = random_batch(args.batch_size, args.size, args.seed, device)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, t = x.contiguous(memory_format=torch.channels_last), t.contiguous(memory_format=torch.channels_last)
    if args.peak_gflops:
        peak, source = args.peak_gflops, "given"
    elif args.no_layers:  # only the layer table uses it
        peak, source = None, "not measured"
    else:
        peak, source = measure_peak(mode, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = torch.compile(model) if mode.compile else model

    def step():
        opt.zero_grad(set_to_none=True)
        with mode.autocast():
            loss = losses(*run(x), t)
        loss.backward()
        opt.step()
        return loss

    def infer():
        with torch.inference_mode(), mode.autocast():
            run(x)

    loss = None
    for _ in range(args.warmup):
        loss = step()
        if mode.compile:
            infer()  # compile the inference graph before timing
    sync(device)
    step_ms, forward_ms = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        step_ms.append((time.perf_counter() - t0) * 1e3)
    for _ in range(args.steps):
        t0 = time.perf_counter()
        infer()
        sync(device)
        forward_ms.append((time.perf_counter() - t0) * 1e3)
    layers = [] if (mode.compile or args.no_layers) else profile_layers(model, opt, x, t, mode, max(1, args.steps))
    nparams = sum(p.numel() for p in model.parameters())
    f = 4  # parameters, gradients and Adam state stay float32 in every mode
    memory = dict(activations=None, activation_grads=None, targets=t.numel() * 4, parameters=nparams * f,
                  gradients=nparams * f, optimizer=2 * nparams * f, total=None,
                  process_peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if device.type == "cuda":
        memory["device_peak_allocated"] = torch.cuda.max_memory_allocated()
    med_step, med_fwd = statistics.median(step_ms), statistics.median(forward_ms)
    return dict(
        engine="pytorch", mode=mode.name,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        threads=torch.get_num_threads(), batch=args.batch_size, height=args.size, width=args.size,
        width_factor=args.width, parameters=nparams, warmup=args.warmup, step_ms=step_ms,
        step_median_ms=med_step, forward_ms=forward_ms, forward_median_ms=med_fwd,
        train_images_per_s=args.batch_size * 1e3 / med_step, infer_images_per_s=args.batch_size * 1e3 / med_fwd,
        peak_gflops=peak, peak_source=source, loss=loss.item(), memory=memory, layers=layers,
        torch=torch.__version__,
    )


# --------------------------------------------------------------------------- output


def gflops(macs, ms):
    return 2 * macs / (ms * 1e6) if macs > 0 and ms > 0 else None


def human(b):
    if b is None:
        return "?"
    if b >= 1 << 30:
        return f"{b / (1 << 30):.2f} GiB"
    if b >= 1 << 20:
        return f"{b / (1 << 20):.1f} MiB"
    return f"{b / 1024:.1f} KiB"


def format_table(r):
    """The layout of lesionseg's profile::format_table."""
    o = []
    o.append(f"{r['engine']} ({r['mode']}) profile: {r['device']}, {r['threads']} threads | batch {r['batch']} x "
             f"{r['height']}x{r['width']} | width {r['width_factor']:g} ({r['parameters'] / 1e6:.2f} M parameters)")
    peak = f"peak {r['peak_gflops']:.1f} GFLOP/s" if r["peak_gflops"] else "peak unknown"
    o.append(f"{r['warmup']} warm-up + {len(r['step_ms'])} timed steps; {peak} ({r['peak_source']})")
    if r["layers"]:
        o.append("")
        o.append(f"{'layer':<13} {'fwd ms':>9} {'bwd ms':>9} {'GMAC':>8} {'fwd GF/s':>9} {'bwd GF/s':>9} "
                 f"{'share':>7} {'% peak':>7}")
        total = sum(l["forward_ms"] + l["backward_ms"] for l in r["layers"])
        opt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731

        def line(name, fm, bm, fmac, bmac):
            all_ = gflops(fmac + bmac, fm + bm)
            pct = 100 * all_ / r["peak_gflops"] if all_ and r["peak_gflops"] else None
            o.append(f"{name:<13} {fm:>9.2f} {bm:>9.2f} {fmac / 1e9:>8.3f} {opt(gflops(fmac, fm)):>9} "
                     f"{opt(gflops(bmac, bm)):>9} {100 * (fm + bm) / total:>6.1f}% {opt(pct):>7}")

        for l in r["layers"]:
            line(l["name"], l["forward_ms"], l["backward_ms"], l["forward_macs"], l["backward_macs"])
        line("all layers", *(sum(l[k] for l in r["layers"]) for k in
                             ("forward_ms", "backward_ms", "forward_macs", "backward_macs")))
    spread = lambda v: f"{min(v):.1f} … {max(v):.1f}"  # noqa: E731
    o.append("")
    o.append(f"training step  {r['step_median_ms']:9.1f} ms (median of {len(r['step_ms'])}: {spread(r['step_ms'])}), "
             f"{r['train_images_per_s']:.2f} images/s")
    o.append(f"inference      {r['forward_median_ms']:9.1f} ms (median of {len(r['forward_ms'])}: "
             f"{spread(r['forward_ms'])}), {r['infer_images_per_s']:.2f} images/s")
    m = r["memory"]
    line = (f"memory         parameters {human(m['parameters'])}, gradients {human(m['gradients'])}, "
            f"Adam {human(m['optimizer'])}; process peak RSS {human(m['process_peak_rss'])}")
    if "device_peak_allocated" in m:
        line += f"; GPU peak allocated {human(m['device_peak_allocated'])}"
    o.append(line)
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--width", type=float, default=1.0, help="channel width factor (1 = the paper's model)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on the CPU (default 2)")
    ap.add_argument("--modes", default=None, help="comma list of fp32, fp32-cl, tf32, bf16, compile")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer breakdown")
    ap.add_argument("--peak-gflops", type=float, default=None, help="peak for the %% column (default: measured)")
    ap.add_argument("--seed", type=int, default=2018)
    ap.add_argument("--json", action="store_true", help="JSON (one object per mode; a list if several)")
    args = ap.parse_args()
    if args.size % 32:
        sys.exit("--size must be a multiple of 32")
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    default_modes = "fp32,tf32,bf16,compile" if device.type == "cuda" else "fp32"
    modes = [Mode(m.strip(), device) for m in (args.modes or default_modes).split(",")]
    reports = []
    for mode in modes:
        r = run_mode(args, mode, device)
        reports.append(r)
        if not args.json:
            print(format_table(r), flush=True)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))


if __name__ == "__main__":
    main()

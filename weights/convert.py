#!/usr/bin/env python3
"""Convert PyTorch weights to safetensors for lesionseg (see weights/README.md).

    convert.py vgg16 --out vgg16.safetensors            torchvision's ImageNet VGG16 encoder
    convert.py checkpoint model.pt --out model.safetensors   a checkpoint of the paper's model

Needs torch and safetensors (and torchvision plus network access for `vgg16`).
"""
import argparse
import sys


def vgg16(out):
    import torchvision
    from safetensors.torch import save_file

    model = torchvision.models.vgg16(weights="IMAGENET1K_V1")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("features.")}
    save_file(tensors, out)
    print(f"wrote {len(tensors)} tensors ({sum(t.numel() for t in tensors.values()):,} values) to {out}")


def checkpoint(path, out):
    import torch
    from safetensors.torch import save_file

    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    tensors = {k: v.detach().contiguous().clone() for k, v in obj.items() if hasattr(v, "dtype") and v.is_floating_point()}
    if not tensors:
        sys.exit(f"{path}: no floating-point tensors found")
    save_file(tensors, out)
    print(f"wrote {len(tensors)} tensors to {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    v = sub.add_parser("vgg16")
    v.add_argument("--out", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("path")
    c.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.what == "vgg16":
        vgg16(args.out)
    else:
        checkpoint(args.path, args.out)


if __name__ == "__main__":
    main()

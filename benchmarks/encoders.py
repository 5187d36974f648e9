"""Encoder speed and checkpoint I/O, each next to a baseline measured in the same run.

- forward+backward w.r.t. the input (what an attack step costs), images/s at 32x32:
  ``resnet18_cifar`` vs torchvision's ResNet-18 with the same CIFAR stem; ``vit_tiny`` (patch 4) vs timm's
  ViT-Tiny with the same shape; dual-BN vs single-BN ResNet-18; ``embed`` (input check + normalization) vs
  the bare network on pre-normalized input (the contract's overhead);
- checkpoints: ``save`` + ``load`` (safetensors, sha256, rebuild, key mapping) vs ``torch.save`` +
  ``torch.load(weights_only=True)`` of the state dict into an existing model.

A ratio above 1.0 means faster than the baseline.

    python benchmarks/encoders.py [--threads 2] [--repeats 3] [--batch 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from robustssl import encoders


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, first-call dispatch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def fwd_bwd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        xi = x.clone().requires_grad_(True)
        forward(xi).sum().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = []

    def compare(label: str, ours: Callable[[], object], base: Callable[[], object], base_label: str,
                n: int = args.batch) -> None:
        t_ours, t_base = best_time(ours, args.repeats), best_time(base, args.repeats)
        rows.append((label, f"{n / t_ours:.1f}", base_label, f"{n / t_base:.1f}", f"{t_base / t_ours:.2f}"))

    tv = encoders.import_torchvision()
    timm = encoders.import_timm()
    torch.manual_seed(0)
    resnet = encoders.create("resnet18_cifar").eval()
    ref = tv.models.resnet18(weights=None)
    ref.conv1, ref.maxpool, ref.fc = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity(), nn.Identity()
    ref.load_state_dict(resnet.state_dict())
    ref.eval()
    xn = resnet.normalize(x)
    ours = fwd_bwd(resnet.embed, x)
    compare("resnet18_cifar embed", ours, fwd_bwd(ref, xn), "torchvision resnet18 (cifar stem)")
    compare("resnet18_cifar embed", ours, fwd_bwd(resnet._embed, xn), "bare network, no check")
    dual = encoders.create("resnet18_cifar", dual_bn=True).eval()
    compare("resnet18_cifar dual_bn", fwd_bwd(dual.embed, x), ours, "resnet18_cifar single BN")

    vit = encoders.create("vit_tiny", img_size=32, patch_size=4).eval()
    ref_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                patch_size=4).eval()
    ref_vit.load_state_dict(vit.state_dict())
    compare("vit_tiny/4 embed", fwd_bwd(vit.embed, x), fwd_bwd(ref_vit, vit.normalize(x)), "timm vit_tiny/4")
    compare("convnet_small embed", fwd_bwd(encoders.create("convnet_small").eval().embed, x),
            fwd_bwd(resnet.embed, x), "resnet18_cifar embed")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def ours_io() -> None:
            encoders.load(encoders.save(resnet, folder / "enc"))

        def torch_io() -> None:
            torch.save(resnet.state_dict(), folder / "enc.pt")
            ref.load_state_dict(torch.load(folder / "enc.pt", weights_only=True), strict=False)

        compare("save+load resnet18_cifar", ours_io, torch_io, "torch.save+torch.load", n=1)

    header = ("ours", "per s", "baseline", "per s", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"threads={args.threads} batch={args.batch} repeats={args.repeats} "
          "(images/s; checkpoints: round trips/s)")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()

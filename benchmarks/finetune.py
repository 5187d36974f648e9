"""SLF bar: robustssl's linear probe (features cached once, full-batch L-BFGS, weight decay chosen on val)
against the conventional 25-epoch SGD linear probe, side by side in one process.

Baseline (AdvCL's ``finetuning_advCL_SLF.py`` recipe, Fan et al. 2021): the frozen encoder (eval mode) runs
over the training images every epoch; a linear head is trained by SGD (momentum 0.9, weight decay 2e-4,
batch 128, 25 epochs, lr divided by 10 at epochs 15 and 20), one run per learning rate of ``--lrs``, and the
learning rate with the best validation accuracy is kept. The head has a BatchNorm without affine parameters
in front of the linear layer (the linear-probing practice of MoCo v3 and MAE, He et al. 2022, App. A.2): raw
features of different encoders differ in scale by orders of magnitude, and without it no single lr grid
suits them. No augmentation, so both sides see exactly the same features. Also shown: the same SGD on
features cached once (it isolates the solver from the encoder passes).

Timed: everything up to the selected head (feature passes, solver, validation); not timed: the test pass.
Prints test accuracy, its difference to the baseline in points, wall seconds and the speed-up, and the same
for process CPU seconds (at one thread the two agree on an idle machine; on a shared one the CPU-time ratio
is the steadier of the two).

    python benchmarks/finetune.py [--settings digits scenes] [--encoder PATH] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustssl import data, encoders
from robustssl.finetune import extract_features, finetune
from robustssl.finetune.protocols import _lr_at
from robustssl.runtime import make_generator, seeded_init

EPOCHS, BATCH, MOMENTUM, WEIGHT_DECAY = 25, 128, 0.9, 2e-4
#: (train, val, test) sizes; digits has fixed splits (1,259 / 179 / 359 images)
SIZES = {"digits": None, "scenes": (4000, 500, 2000)}


def load_setting(name: str) -> dict[str, data.VisionDataset]:
    sizes = SIZES[name]
    if sizes is None:
        return {split: data.load(name, split=split) for split in ("train", "val", "test")}
    return {split: data.load(name, split=split, n=n) for split, n in zip(("train", "val", "test"), sizes,
                                                                          strict=True)}


def probe_head(dim: int, classes: int, seed: int) -> nn.Module:
    with seeded_init(seed):
        return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, classes))


def accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float(correct(head, features, labels).float().mean())


def correct(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per test image: is the prediction right? (B,) bool."""
    head.eval()
    with torch.no_grad():
        return head(features).argmax(1) == labels


def paired_standard_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error, in points, of the accuracy difference of two classifiers on the same test images
    (McNemar: only the images they disagree on carry information):
    100 * sqrt(n01 + n10 - (n01 - n10)^2 / n) / n."""
    n01, n10, n = int((a & ~b).sum()), int((~a & b).sum()), len(a)
    return 100 * max(n01 + n10 - (n01 - n10) ** 2 / n, 0.0) ** 0.5 / n


def sgd_probe(encoder: encoders.Encoder, sets: dict[str, data.VisionDataset], lrs: list[float], cached: bool,
              seed: int) -> dict[str, Any]:
    """The baseline: one 25-epoch SGD run per lr, the best on validation kept. ``cached``: features of the
    training and validation images computed once instead of every epoch."""
    start, cpu = time.perf_counter(), time.process_time()
    encoder.eval()
    train, val = sets["train"], sets["val"]
    if cached:
        x_train, t_train = extract_features(encoder, train, "embed", batch_size=256)
        y_train = t_train["label"]
    x_val, t_val = extract_features(encoder, val, "embed", batch_size=256)
    classes = train.num_classes
    best: tuple[float, float, nn.Module] | None = None
    for lr in lrs:
        head = probe_head(encoder.embed_dim, classes, seed)
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        order = make_generator(seed)
        for epoch in range(EPOCHS):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(lr, epoch, EPOCHS, "step")
            head.train()
            if cached:
                perm = torch.randperm(len(y_train), generator=order)
                batches = ((x_train[idx], y_train[idx]) for idx in perm.split(BATCH))
            else:
                shuffled = train.batches(BATCH, shuffle=True, generator=order)
                batches = ((b["image"], b["label"]) for b in shuffled)
            for inputs, labels in batches:
                if cached:
                    z = inputs
                else:
                    with torch.no_grad():
                        z = encoder.embed(inputs)
                loss = F.cross_entropy(head(z), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        val_acc = accuracy(head, x_val, t_val["label"])
        if best is None or val_acc > best[0]:
            best = (val_acc, lr, head)
    assert best is not None
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    x_test, t_test = extract_features(encoder, sets["test"], "embed", batch_size=256)
    right = correct(best[2], x_test, t_test["label"])
    return {"test": float(right.float().mean()), "correct": right, "val": best[0],
            "chosen": f"lr {best[1]:g}", "seconds": seconds, "cpu": cpu}


def slf_probe(encoder: encoders.Encoder, sets: dict[str, data.VisionDataset], seed: int) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    result = finetune(encoder, sets["train"], sets["val"], task="classification", protocol="slf", seed=seed,
                      device="cpu")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    x_test, t_test = extract_features(encoder, sets["test"], "embed", batch_size=256)
    right = correct(result.model.head, x_test, t_test["label"])  # the task model's head on cached features
    return {"test": float(right.float().mean()), "correct": right, "val": result.info["val_score"],
            "chosen": f"wd {result.info['weight_decay']:g}", "seconds": seconds, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--encoder", default=None, metavar="PATH",
                        help="also run a checkpoint (e.g. a SimCLR convnet_small); always runs a seeded "
                             "random-init convnet_small")
    parser.add_argument("--lrs", default="1,0.1,0.01", help="the baseline's learning-rate grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lrs = [float(v) for v in args.lrs.split(",")]
    with seeded_init(args.seed):
        candidates = {"random-init": encoders.create("convnet_small")}
    if args.encoder:
        candidates[Path(args.encoder).stem] = encoders.load(args.encoder)
    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)  # first optimizer pays torch's one-off imports

    print(f"linear probe: SLF (cached features + L-BFGS) vs {EPOCHS}-epoch SGD, lr grid {lrs}; "
          f"threads={args.threads}, convnet_small")
    header = (f"{'setting':<36} {'method':<44} {'chosen':>9} {'val':>7} {'test':>7} {'Δ pts':>6} "
              f"{'wall s':>8} {'speed-up':>9} {'CPU s':>8} {'speed-up':>9}")
    print(header)
    print("-" * len(header))
    for setting in args.settings:
        sets = load_setting(setting)
        n = "/".join(str(len(sets[s])) for s in ("train", "val", "test"))
        for enc_name, encoder in candidates.items():
            name = f"{setting} ({n}) {enc_name}"
            rows = [("SGD, encoder pass every epoch (baseline)",
                     sgd_probe(encoder, sets, lrs, False, args.seed)),
                    ("SGD on cached features", sgd_probe(encoder, sets, lrs, True, args.seed)),
                    ("SLF: cached features + L-BFGS (robustssl)", slf_probe(encoder, sets, args.seed))]
            base = rows[0][1]
            for method, row in rows:
                delta = 100 * (row["test"] - base["test"])
                print(f"{name:<36} {method:<44} {row['chosen']:>9} {row['val']:>7.4f} {row['test']:>7.4f} "
                      f"{delta:>+6.2f} {row['seconds']:>8.2f} {base['seconds'] / row['seconds']:>8.1f}x "
                      f"{row['cpu']:>8.2f} {base['cpu'] / row['cpu']:>8.1f}x")
                name = ""
            slf = rows[2][1]
            gap, speed = 100 * (slf["test"] - base["test"]), base["seconds"] / slf["seconds"]
            se = paired_standard_error(slf["correct"], base["correct"])
            verdict = {True: "met", False: "NOT met"}
            print(f"{'':<36} paired standard error of the difference: {se:.2f} points "
                  f"(one test image = {100 / len(slf['correct']):.2f})")
            print(f"{'':<36} bar: |SLF - SGD| <= 0.5 points ({gap:+.2f}: {verdict[abs(gap) <= 0.5]}; SLF at "
                  f"most 0.5 below: {verdict[gap >= -0.5]}), >= 10x faster in wall time ({speed:.1f}x: "
                  f"{verdict[speed >= 10]}); vs one SGD run (grid / {len(lrs)}): {speed / len(lrs):.1f}x")


if __name__ == "__main__":
    main()

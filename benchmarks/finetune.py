"""SLF bar: robustssl's linear probe (features cached once, full-batch L-BFGS, weight decay chosen on val)
against the conventional 25-epoch SGD linear probe, side by side in one process.

Baseline (AdvCL's ``finetuning_advCL_SLF.py`` recipe, Fan et al. 2021): the frozen encoder (eval mode) runs
over the training images every epoch; a linear head is trained by SGD (momentum 0.9, weight decay 2e-4,
batch 128, 25 epochs, lr divided by 10 at epochs 15 and 20), one run per learning rate of ``--lrs``, and the
learning rate with the best validation accuracy is kept. The head has a BatchNorm without affine parameters
in front of the linear layer (the linear-probing practice of MoCo v3 and MAE, He et al. 2022, App. A.2): raw
features of different encoders differ in scale by orders of magnitude, and without it no single lr grid
suits them. No augmentation, so both sides see exactly the same features. Also shown: the same SGD on
features cached once (it isolates the solver from the encoder passes), and SLF restricted to the weight
decay SGD uses (the same objective, so any remaining gap is the solver's, not the model selection's).

Timed: everything up to the selected head (feature passes, solver, validation); not timed: the test pass.
Prints test accuracy, its difference to the baseline in points, wall seconds and the speed-up, and the same
for process CPU seconds (at one thread the two agree on an idle machine; on a shared one the CPU-time ratio
is the steadier of the two).

Accuracy over repeated splits (``--repeats R``): one test set cannot resolve half a point (one digits test
image is 0.28 points), so the accuracy comparison is repeated on R independent draws of the data: digits'
1,797 images re-split at random into the same 1,259/179/359 sizes (repeat 0 is the shipped split), scenes
generated with seed r. Repeat 0 runs the baseline as written (encoder pass every epoch); later repeats run
the same SGD on features cached once, which sees the same features in the same order (repeat 0 prints both,
so that is checked), because only its accuracy is needed there. The summary gives the mean SLF - SGD
difference and its standard error across repeats.

    python benchmarks/finetune.py [--settings digits scenes] [--encoder PATH] [--threads 1] [--repeats 5]
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
from robustssl.metrics import mean_and_standard_error, paired_standard_error
from robustssl.runtime import make_generator, seeded_init

EPOCHS, BATCH, MOMENTUM, WEIGHT_DECAY = 25, 128, 0.9, 2e-4
#: SGD's ``weight_decay`` adds ``wd * W`` to the gradient, the gradient of ``wd/2 * ||W||^2``; SLF minimizes
#: ``CE + wd * ||W||^2``, so SGD's 2e-4 is SLF's 1e-4
SAME_OBJECTIVE_DECAY = WEIGHT_DECAY / 2
#: (train, val, test) sizes; digits has fixed splits (1,259 / 179 / 359 images)
SIZES = {"digits": None, "scenes": (4000, 1000, 4000)}
SPLITS = ("train", "val", "test")


def load_setting(name: str, repeat: int = 0) -> dict[str, data.VisionDataset]:
    """The three splits of draw ``repeat``: digits' shipped split for 0, else its images pooled and re-split
    at random (seed ``repeat``) into the same sizes; scenes generated with seed ``repeat``."""
    sizes = SIZES[name]
    if sizes is not None:
        return {split: data.load(name, split=split, n=n, seed=repeat)
                for split, n in zip(SPLITS, sizes, strict=True)}
    shipped = {split: data.load(name, split=split) for split in SPLITS}
    if repeat == 0:
        return shipped
    images = torch.cat([next(shipped[s].batches(len(shipped[s])))["image"] for s in SPLITS])
    labels = torch.cat([next(shipped[s].batches(len(shipped[s])))["label"] for s in SPLITS])
    perm = torch.randperm(len(labels), generator=make_generator(repeat))
    out, start = {}, 0
    for split in SPLITS:
        idx = perm[start:start + len(shipped[split])]
        start += len(idx)
        out[split] = data.TensorDataset(images[idx], name=name, split=split,
                                        num_classes=shipped[split].num_classes, label=labels[idx])
    return out


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


def sgd_probe(encoder: encoders.Encoder, sets: dict[str, data.VisionDataset], lrs: list[float], cached: bool,
              seed: int, epochs: int = EPOCHS) -> dict[str, Any]:
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
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(lr, epoch, epochs, "step")
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


def slf_probe(encoder: encoders.Encoder, sets: dict[str, data.VisionDataset], seed: int,
              weight_decays: tuple[float, ...] | None = None) -> dict[str, Any]:
    """robustssl's SLF; ``weight_decays``: its grid (default: the protocol's own)."""
    start, cpu = time.perf_counter(), time.process_time()
    grid = {} if weight_decays is None else {"weight_decays": weight_decays}
    result = finetune(encoder, sets["train"], sets["val"], task="classification", protocol="slf", seed=seed,
                      device="cpu", **grid)
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
    parser.add_argument("--lrs", default="1,0.3,0.1,0.03,0.01", help="the baseline's learning-rate grid")
    parser.add_argument("--repeats", type=int, default=5,
                        help="independent data draws for the accuracy comparison (the timing is repeat 0's)")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"SGD epochs (the bar's baseline: {EPOCHS}; more shows where SGD converges)")
    parser.add_argument("--cached-baseline", action="store_true",
                        help="skip the encoder-every-epoch baseline (accuracy-only runs): the cached SGD "
                             "makes the same predictions, which a default run checks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    lrs = [float(v) for v in args.lrs.split(",")]
    with seeded_init(args.seed):
        candidates = {"random-init": encoders.create("convnet_small")}
    if args.encoder:
        candidates[Path(args.encoder).stem] = encoders.load(args.encoder)
    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)  # first optimizer pays torch's one-off imports

    print(f"linear probe: SLF (cached features + L-BFGS) vs {args.epochs}-epoch SGD, lr grid {lrs}; "
          f"threads={args.threads}, convnet_small, {args.repeats} data draw(s)")
    header = (f"{'setting':<40} {'method':<44} {'chosen':>9} {'val':>7} {'test':>7} {'Δ pts':>6} "
              f"{'wall s':>8} {'speed-up':>9} {'CPU s':>8} {'speed-up':>9}")
    verdict = {True: "met", False: "NOT met"}
    for setting in args.settings:
        for enc_name, encoder in candidates.items():
            print(header)
            print("-" * len(header))
            deltas, paired, same_deltas = [], [], []
            for repeat in range(args.repeats):
                sets = load_setting(setting, repeat)
                n = "/".join(str(len(sets[s])) for s in SPLITS)
                name = f"{setting} ({n}) {enc_name} #{repeat}"
                rows = []
                timed = repeat == 0 and not args.cached_baseline
                if timed:
                    rows.append(("SGD, encoder pass every epoch (baseline)",
                                 sgd_probe(encoder, sets, lrs, False, args.seed, args.epochs)))
                rows += [("SGD on cached features",
                          sgd_probe(encoder, sets, lrs, True, args.seed, args.epochs)),
                         ("SLF at SGD's weight decay (same objective)",
                          slf_probe(encoder, sets, args.seed, (SAME_OBJECTIVE_DECAY,))),
                         ("SLF: cached features + L-BFGS (robustssl)", slf_probe(encoder, sets, args.seed))]
                base = rows[0][1]
                for method, row in rows:
                    delta = 100 * (row["test"] - base["test"])
                    print(f"{name:<40} {method:<44} {row['chosen']:>9} {row['val']:>7.4f} "
                          f"{row['test']:>7.4f} {delta:>+6.2f} {row['seconds']:>8.2f} "
                          f"{base['seconds'] / row['seconds']:>8.1f}x "
                          f"{row['cpu']:>8.2f} {base['cpu'] / row['cpu']:>8.1f}x")
                    name = ""
                sgd, same, slf = rows[-3][1], rows[-2][1], rows[-1][1]
                deltas.append(100 * (slf["test"] - sgd["test"]))
                paired.append(paired_standard_error(slf["correct"], sgd["correct"]))
                same_deltas.append(100 * (same["test"] - sgd["test"]))
                if timed:
                    identical = bool(torch.equal(rows[0][1]["correct"], sgd["correct"]))
                    speed = base["seconds"] / slf["seconds"]
                    print(f"{'':<40} cached SGD makes the baseline's predictions on every test image: "
                          f"{identical}; SLF >= 10x faster in wall time ({speed:.1f}x: "
                          f"{verdict[speed >= 10]}); "
                          f"vs one SGD run (grid / {len(lrs)}): {speed / len(lrs):.1f}x")
            mean, se_mean = mean_and_standard_error(deltas)
            se_paired = sum(se ** 2 for se in paired) ** 0.5 / len(paired)
            print(f"{setting} {enc_name}: SLF - SGD per draw " + ", ".join(f"{d:+.2f}" for d in deltas)
                  + f"; mean {mean:+.2f} points, s.e. across draws {se_mean:.2f}, pooled paired s.e. "
                  f"{se_paired:.2f}; bar |mean| <= 0.5: {verdict[abs(mean) <= 0.5]}")
            same_mean = sum(same_deltas) / len(same_deltas)
            print(f"{setting} {enc_name}: SLF at SGD's weight decay - SGD per draw "
                  + ", ".join(f"{d:+.2f}" for d in same_deltas) + f"; mean {same_mean:+.2f} points")
            print()


if __name__ == "__main__":
    main()

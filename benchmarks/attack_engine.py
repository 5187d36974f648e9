"""Attack-engine savings, as ratios against baselines run side by side in this process.

1. Per-sample early stopping (eps 8/255): PGD-20 with ``early_stop=True`` against the same attack without
   it (samples already adversarial keep being attacked). Same robust accuracy is expected; the ratio is
   the saving.
2. Epsilon sweep reuse: ``attack(..., eps=[2, 4, 6, 8]/255)`` in one call against four separate calls.
3. APGD against PGD with the same number of steps (both without early stopping): the per-step overhead of
   APGD's bookkeeping (momentum, checkpoints, best points).
4. APGD-T and FAB-T (9 target classes, 10 steps) with the targets side by side in one batch against the same
   attacks running the targets one after another, on the points APGD-CE leaves robust at eps 1/255: the
   same passes (robust points run every target in full either way), so the ratio is what the larger
   batches save per image.

Model: a small CNN (two conv layers, 32x32 inputs, 10 classes) with weights from a fixed seed; labels are
its clean predictions, so clean accuracy is 100 % and robust accuracy falls with eps. Timings are medians
of ``--repeats`` runs, ours and the baseline alternating.

    python benchmarks/attack_engine.py            # ~2-4 minutes on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from robustssl.threats import OBJECTIVES, ThreatModel, attack
from robustssl.threats.attacks import APGD, FAB, PGD, APGDTargeted


def _model() -> nn.Module:
    torch.manual_seed(0)  # benchmark script, not library code: a fixed model
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
    ).eval()


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _paired(ours: Callable[[], object], base: Callable[[], object], repeats: int) -> tuple[float, float]:
    t_ours, t_base = [], []
    for _ in range(repeats):
        t_ours.append(_time(ours))
        t_base.append(_time(base))
    return statistics.median(t_ours), statistics.median(t_base)


def _paired_outputs(ours: Callable[[], torch.Tensor], base: Callable[[], torch.Tensor],
                    repeats: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """As ``_paired``, also returning the last outputs of both."""
    outputs: dict[str, torch.Tensor] = {}
    t_ours, t_base = _paired(lambda: outputs.__setitem__("ours", ours()),
                             lambda: outputs.__setitem__("base", base()), repeats)
    return t_ours, t_base, outputs["ours"], outputs["base"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _model()
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    ce, threat = OBJECTIVES.create("ce"), ThreatModel("linf", 8 / 255)
    rows = []

    def robust(x_adv: torch.Tensor) -> float:
        return robust_on(x_adv, y)

    def robust_on(x_adv: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == labels).float().mean())

    stop, full = PGD(steps=20), PGD(steps=20, early_stop=False)
    results = {}
    t_ours, t_base = _paired(lambda: results.__setitem__("stop", stop(model, x, y, ce, threat)),
                             lambda: results.__setitem__("full", full(model, x, y, ce, threat)), args.repeats)
    rows.append(("PGD-20 early stop vs none", t_ours, t_base, stop.counts["bwd"], full.counts["bwd"],
                 f"robust acc {robust(results['stop']):.3f} vs {robust(results['full']):.3f}"))

    radii = [2 / 255, 4 / 255, 6 / 255, 8 / 255]
    sweep_out: dict = {}

    def one_call() -> None:
        sweep_out["sweep"] = attack(model, x, y, "pgd", eps=radii, steps=20)

    def separate() -> None:
        sweep_out["alone"] = [attack(model, x, y, "pgd", eps=e, steps=20) for e in radii]

    t_ours, t_base = _paired(one_call, separate, args.repeats)
    accs = " ".join(f"{r.robust_accuracy:.3f}" for r in sweep_out["sweep"])
    accs_alone = " ".join(f"{r.robust_accuracy:.3f}" for r in sweep_out["alone"])
    rows.append(("sweep 4 eps vs 4 calls", t_ours, t_base, sum(r.bwd for r in sweep_out["sweep"]),
                 sum(r.bwd for r in sweep_out["alone"]), f"robust acc {accs} vs {accs_alone}"))

    apgd, pgd = APGD(steps=20, early_stop=False), PGD(steps=20, early_stop=False)
    t_ours, t_base = _paired(lambda: apgd(model, x, y, ce, threat), lambda: pgd(model, x, y, ce, threat),
                             args.repeats)
    rows.append(("APGD-20 vs PGD-20 (no stop)", t_ours, t_base, apgd.counts["bwd"], pgd.counts["bwd"], ""))

    small = ThreatModel("linf", 1 / 255)
    x_ce = APGD(steps=20)(model, x, y, ce, small, torch.Generator().manual_seed(0))
    with torch.no_grad():
        kept = model(x_ce).argmax(1) == y
    xr, yr = x[kept], y[kept]
    for label, batched, alone in (
        ("APGD-T", APGDTargeted(steps=10), APGDTargeted(steps=10, target_batch=1)),
        ("FAB-T", FAB(steps=10, targeted=True), FAB(steps=10, targeted=True, target_batch=1)),
    ):
        t_ours, t_base, x_b, x_a = _paired_outputs(
            lambda atk=batched: atk(model, xr, yr, ce, small, torch.Generator().manual_seed(0)),
            lambda atk=alone: atk(model, xr, yr, ce, small, torch.Generator().manual_seed(0)),
            args.repeats,
        )
        rows.append((f"{label} targets batched vs not", t_ours, t_base, batched.counts["bwd"],
                     alone.counts["bwd"],
                     f"{len(yr)} points; robust acc {robust_on(x_b, yr):.3f} vs {robust_on(x_a, yr):.3f}"))

    print(f"batch {args.batch}, 32x32, {args.threads} threads, median of {args.repeats}")
    header = ("comparison", "ours s", "base s", "ratio", "bwd ours", "bwd base")
    print(f"{header[0]:<30} {header[1]:>8} {header[2]:>8} {header[3]:>6} {header[4]:>9} {header[5]:>9}  note")
    for name, t_o, t_b, b_o, b_b, note in rows:
        print(f"{name:<30} {t_o:>8.3f} {t_b:>8.3f} {t_o / t_b:>6.2f} {b_o:>9} {b_b:>9}  {note}")


if __name__ == "__main__":
    main()

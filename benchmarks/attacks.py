"""Attack engine speed, as ratios against baselines run side by side in this process.

1. PGD-k against a bare loop of k forward+backward passes on the same model and batch (bar: <= 1.05x).
2. PGD, APGD and the AutoAttack-standard cascade against torchattacks 3.5.1 with the same budgets
   (bar: no slower; AutoAttack: >= 2x faster at equal robust accuracy, +-0.5 points). PGD and APGD run the
   attack classes on the model as given; AutoAttack runs through ``robustssl.threats.attack``, which folds
   eval-mode batch norm into the convolutions for the attack's passes (``fold_bn``; ``threats/fusion.py``),
   with rows for folding on against off and for the folded PGD against the bare loop.
3. bf16 autocast: AutoAttack ours against torchattacks' cascade, both under autocast; ours bf16 against
   ours fp32 for PGD and AutoAttack (speed and robust accuracy).
4. Per stage of AutoAttack-standard (APGD-CE, APGD-T, FAB-T, Square), ours and torchattacks' each running
   its own cascade stage by stage: points attacked and broken, seconds, model passes (forward and backward,
   in images, counted by a wrapper around the model that both sides call).

Model: robustssl's ``resnet18_cifar`` (BasicBlocks [2, 2, 2, 2], base ``width=--width``) and a linear head
in a ``TaskModel``, with batch-norm statistics calibrated and its last layer fitted on synthetic 32x32
ten-class data (smooth class templates plus noise); labels are the true classes. Ours and the baseline run
alternately ``--repeats`` times; the table shows the median seconds of each and the median of the per-pair
ratios ``ours/base`` (speed-up = its inverse).

    python benchmarks/attacks.py                  # ~5 minutes on 2 idle CPU cores
    python benchmarks/attacks.py --quick          # a smoke run (~1 minute)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import robustssl as rs
from robustssl.heads.classifier import LinearClassifier
from robustssl.heads.task_model import TaskModel
from robustssl.runtime.precision import autocast
from robustssl.runtime.seeding import make_generator
from robustssl.threats import OBJECTIVES, ThreatModel
from robustssl.threats.attacks.apgd import APGD
from robustssl.threats.attacks.autoattack import AutoAttack
from robustssl.threats.attacks.pgd import PGD


def build_model(width: int) -> TaskModel:
    """robustssl's CIFAR ResNet-18 at base width ``width`` (64 in the original) with a linear head."""
    encoder = rs.encoders.create("resnet18_cifar", width=width)
    return TaskModel(encoder, LinearClassifier(encoder.embed_dim, 10), "classification")


def synthetic(n: int, g: torch.Generator, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    templates = F.interpolate(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(99)),
                              size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.25 + 0.5 * templates[y] + noise * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return x, y


def fit(model: TaskModel, x: torch.Tensor, y: torch.Tensor) -> TaskModel:
    """Calibrate batch-norm statistics on ``x``, then fit the last layer (a linear probe on the random
    features): seconds on a CPU, and the classifier has realistic margins (full training takes minutes)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 256):
            model(x[i:i + 256])
    model.eval()
    with torch.no_grad():
        raw = torch.cat([model.encoder.embed(x[i:i + 256]) for i in range(0, len(x), 256)])
    mean, std = raw.mean(0), raw.std(0) + 1e-6
    probe = nn.Linear(raw.shape[1], 10)
    opt = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(300):
        loss = F.cross_entropy(probe((raw - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the feature standardization into the model's last layer
        model.head.linear.weight.copy_(probe.weight / std)
        model.head.linear.bias.copy_(probe.bias - (probe.weight * mean / std).sum(1))
    return model


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def side_by_side(ours: Callable[[], object], base: Callable[[], object], repeats: int):
    """Median seconds of ours and of the baseline over alternating runs, the median of the per-pair ratios
    (robust to the load of a shared machine drifting between pairs), and the last outputs. Each side runs
    once untimed first, so neither pays for first-call setup (oneDNN primitives for new shapes, allocator
    growth) inside the timing."""
    ours()
    base()
    t_ours, t_base, out_ours, out_base = [], [], None, None
    for _ in range(repeats):
        dt, out_ours = timed(ours)
        t_ours.append(dt)
        dt, out_base = timed(base)
        t_base.append(dt)
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_base, strict=True))
    return statistics.median(t_ours), statistics.median(t_base), ratio, out_ours, out_base


class Counted(nn.Module):
    """``model`` with its forward and backward passes counted in images (a hook on the output). In eval
    mode like the model: torchattacks puts a model it is handed in training mode when it finds it so."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.fwd, self.bwd = model, 0, 0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.fwd += x.shape[0]
        if out.requires_grad:
            n = x.shape[0]

            def count(grad: torch.Tensor) -> None:
                self.bwd += n

            out.register_hook(count)
        return out


class Bf16(nn.Module):
    """``model``'s forward under bf16 autocast, logits returned in fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # as ``Counted``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, "bf16"):
            return self.model(x).float()


STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def torchattacks_stages(model: nn.Module, eps: float, steps: int, queries: int) -> list:
    """torchattacks' AutoAttack-standard stages (as its ``AutoAttack`` builds them) with these budgets."""
    import torchattacks

    return [
        torchattacks.APGD(model, eps=eps, steps=steps, loss="ce", n_restarts=1, seed=0),
        torchattacks.APGDT(model, eps=eps, steps=steps, n_classes=10, n_restarts=1, seed=0),
        torchattacks.FAB(model, eps=eps, steps=steps, multi_targeted=True, n_classes=10, n_restarts=1,
                         seed=0),
        torchattacks.Square(model, eps=eps, n_queries=queries, n_restarts=1, seed=0),
    ]


def staged_cascade(model: Counted, x: torch.Tensor, y: torch.Tensor, run_stage: Callable) -> list[tuple]:
    """Run a cascade stage by stage on the still-robust points, as ``MultiAttack`` and our ``AutoAttack``
    do: per stage (attacked, broken, seconds, fwd, bwd). ``run_stage(i, x, y) -> x_adv``."""
    with torch.no_grad():
        robust = (model.model(x).argmax(1) == y).nonzero()[:, 0]
    rows = []
    for i in range(len(STAGES)):
        model.fwd = model.bwd = 0
        seconds, adv = timed(lambda i=i, robust=robust: run_stage(i, x[robust], y[robust]))
        with torch.no_grad():
            kept = model.model(adv).argmax(1) == y[robust]
        rows.append((len(robust), int((~kept).sum()), seconds, model.fwd, model.bwd))
        robust = robust[kept]
    return rows


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, one repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    # Tiny: the random-feature ResNet is fragile, and this radius leaves about a third of the points robust
    # after APGD-CE, so every stage of the cascade has work.
    parser.add_argument("--eps", type=float, default=0.1 / 255)
    parser.add_argument("--steps", type=int, default=10, help="PGD/APGD/FAB iterations")
    parser.add_argument("--queries", type=int, default=100, help="Square queries")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.queries, args.repeats, args.batch = 5, 50, 1, 32
    try:
        import torchattacks
        from torchattacks.wrappers.multiattack import MultiAttack
    except ImportError:
        print("torchattacks is needed for the baselines: make install-dev", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # a script, not library code: fixes the model's initial weights
    g = torch.Generator().manual_seed(0)
    model = build_model(args.width)
    x_train, y_train = synthetic(1024, g)
    seconds, _ = timed(lambda: fit(model, x_train, y_train))
    x, y = synthetic(args.batch, g)
    threat = ThreatModel("linf", args.eps)
    ce = OBJECTIVES.create("ce")
    k = args.steps
    print(f"ResNet-18 (width {args.width}) fitted in {seconds:.0f}s; batch {args.batch} 3x32x32, "
          f"eps {args.eps:.4f}, {k} steps, {args.queries} Square queries, {args.threads} threads, "
          f"median of {args.repeats}; "
          f"clean accuracy {100 * accuracy(model, x, y):.1f}%")
    header = f"{'measurement':<46} {'ours s':>7} {'base s':>7} {'ours/base':>9} {'speed-up':>8}  note"
    print("\n" + header, flush=True)

    def row(name: str, t_ours: float, t_base: float, ratio: float, note: str = "") -> None:
        print(f"{name:<46} {t_ours:>7.2f} {t_base:>7.2f} {ratio:>9.3f} {1 / ratio:>7.2f}x  {note}",
              flush=True)

    def robust(x_adv: torch.Tensor) -> str:
        return f"{100 * accuracy(model, x_adv, y):.1f}%"

    # 1. PGD-k against k bare forward+backward passes (no early stop: the same k passes on both sides).
    def bare_loop() -> torch.Tensor:
        delta = torch.zeros_like(x)
        for _ in range(k):
            xg = (x + delta).clamp(0, 1).requires_grad_(True)
            loss = F.cross_entropy(model(xg), y)
            grad, = torch.autograd.grad(loss, xg)
            delta = (delta + args.eps / 4 * grad.sign()).clamp(-args.eps, args.eps)
        return delta

    pgd_fixed = PGD(steps=k, random_start=False, early_stop=False, keep_best=False)
    ours, base, ratio, _, _ = side_by_side(lambda: pgd_fixed.attack(model, x, y, ce, threat), bare_loop,
                                    args.repeats)
    row(f"PGD-{k} (no early stop) vs bare {k}x fwd+bwd loop", ours, base, ratio, "bar <= 1.05x")

    # 2. PGD and APGD against torchattacks, same budgets.
    pgd = PGD(steps=k, step_size=args.eps / 4)
    ta_pgd = torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 4, steps=k)
    ours, base, ratio, a, b = side_by_side(lambda: pgd.attack(model, x, y, ce, threat, make_generator(0)),
                                    lambda: ta_pgd(x, y), args.repeats)
    row(f"PGD-{k} vs torchattacks.PGD", ours, base, ratio,
                 f"robust {robust(a)} vs {robust(b)}")
    apgd = APGD(steps=k)
    ta_apgd = torchattacks.APGD(model, eps=args.eps, steps=k, loss="ce", seed=0)
    ours, base, ratio, a, b = side_by_side(lambda: apgd.attack(model, x, y, ce, threat, make_generator(0)),
                                    lambda: ta_apgd(x, y), args.repeats)
    row(f"APGD-CE-{k} vs torchattacks.APGD", ours, base, ratio,
                 f"robust {robust(a)} vs {robust(b)}")

    # 3. AutoAttack-standard against torchattacks' cascade with the same budgets. Ours runs as a user runs
    # it, through robustssl.threats.attack: batch norm folded for the attack's passes (fold_bn, the default;
    # the fold itself is inside the timing), the clean and final verdicts on the model as given.
    aa = AutoAttack(steps=k, n_queries=args.queries, n_classes=10)
    ta_aa = MultiAttack(torchattacks_stages(model, args.eps, k, args.queries))

    def autoattack(fold_bn: bool = True, precision: str = "fp32") -> torch.Tensor:
        result = rs.threats.attack(model, x, y, aa, eps=args.eps, generator=make_generator(0),
                                   fold_bn=fold_bn, precision=precision)
        return result.x_adv

    ours, base, ratio, a, b = side_by_side(autoattack, lambda: ta_aa(x, y), args.repeats)
    fp32_report = aa.last_report
    row("AutoAttack-standard vs torchattacks", ours, base, ratio,
                 f"robust {robust(a)} vs {robust(b)}; bar >= 2x")
    ours, base, ratio, a, b = side_by_side(autoattack, lambda: autoattack(fold_bn=False), args.repeats)
    row("AutoAttack-standard fold_bn on vs off (ours)", ours, base, ratio,
        f"robust {robust(a)} vs {robust(b)}")
    ours, base, ratio, a, b = side_by_side(
        lambda: rs.threats.attack(model, x, y, pgd_fixed, eps=args.eps).x_adv, bare_loop, args.repeats)
    row(f"PGD-{k} via the API (folded) vs bare loop", ours, base, ratio, "the bare loop is unfolded")

    # 4. bf16 autocast: ours against torchattacks (both under autocast), then against ours in fp32.
    bf16 = Bf16(model)
    ta_aa16 = MultiAttack(torchattacks_stages(bf16, args.eps, k, args.queries))
    ours, base, ratio, a, b = side_by_side(lambda: autoattack(precision="bf16"), lambda: ta_aa16(x, y),
                                           args.repeats)
    row("AutoAttack-standard bf16 vs torchattacks bf16", ours, base, ratio,
        f"robust {robust(a)} vs {robust(b)} (judged in fp32)")
    ours, base, ratio, a, b = side_by_side(lambda: autoattack(precision="bf16"), autoattack, args.repeats)
    row("AutoAttack-standard bf16 vs fp32", ours, base, ratio,
                 f"robust {robust(a)} vs {robust(b)} (judged in fp32)")
    ours, base, ratio, _, _ = side_by_side(lambda: pgd_fixed.attack(bf16, x, y, ce, threat),
                                    lambda: pgd_fixed.attack(model, x, y, ce, threat), args.repeats)
    row(f"PGD-{k} bf16 vs fp32", ours, base, ratio)

    print("\nAutoAttack-standard (fp32, folded) per stage, last run:")
    print(fp32_report.table())

    # 5. Per stage, ours and torchattacks' cascades run stage by stage (medians over the repeats).
    counted = Counted(model)
    ours_stages = [AutoAttack(steps=k, n_queries=args.queries, n_classes=10, attacks=[stage])
                   for stage in STAGES]
    theirs_stages = torchattacks_stages(counted, args.eps, k, args.queries)
    runs: dict[str, list] = {"ours": [], "torchattacks": []}
    for _ in range(args.repeats):
        runs["ours"].append(staged_cascade(counted, x, y, lambda i, xs, ys: ours_stages[i].attack(
            counted, xs, ys, None, threat, make_generator(0))))
        runs["torchattacks"].append(staged_cascade(counted, x, y, lambda i, xs, ys: theirs_stages[i](xs, ys)))
    if model.training:
        raise RuntimeError("the model left eval mode during the benchmark; its figures are not comparable")
    print("\nPer stage, each cascade run stage by stage, attack classes on the unfolded model "
          f"(median seconds of {args.repeats}; passes in images):")
    print(f"{'stage':<8} {'side':<13} {'attacked':>8} {'broken':>6} {'seconds':>8} {'fwd':>7} {'bwd':>7}")
    for i, stage in enumerate(STAGES):
        for side, results in runs.items():
            attacked, broken, _, fwd, bwd = results[-1][i]
            seconds = statistics.median(r[i][2] for r in results)
            print(f"{stage:<8} {side:<13} {attacked:>8} {broken:>6} {seconds:>8.2f} {fwd:>7} {bwd:>7}")
    for side, results in runs.items():
        print(f"{'total':<8} {side:<13} {'':>8} {'':>6} "
              f"{statistics.median(sum(r[2] for r in run) for run in results):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Linear-probe solver: robustssl's full-batch L-BFGS with a hand-written gradient, against the same L-BFGS
driven by autograd and against scikit-learn's multinomial LogisticRegression (lbfgs), on identical
standardized features and the same weight-decay grid, warm-started from strong to weak decay.

Prints wall time per full grid (best of ``--repeats``), the ratio to scikit-learn, and the validation accuracy
each solver's selected weight decay reaches. Features are a synthetic Gaussian mixture shaped like cached
ResNet-18 embeddings (D=512); the solvers only ever see features, so no encoder is needed.

    python benchmarks/bench_linear_probe.py [--n 5000 --dim 512 --classes 10 --threads 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from robustssl.finetune.heads import DEFAULT_WEIGHT_DECAYS, _lbfgs_fit
from robustssl.runtime import make_generator


def mixture(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = make_generator(seed)
    centres = torch.randn(classes, dim, generator=make_generator(1234)) * 0.06
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def autograd_fit(x: torch.Tensor, y: torch.Tensor, layer: nn.Linear, wd: float, max_iter: int) -> None:
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), y) + wd * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def torch_grid(fit, x, y, xv, yv, classes: int, max_iter: int) -> float:
    layer = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    best = 0.0
    for wd in DEFAULT_WEIGHT_DECAYS:
        fit(x, y, layer, wd, max_iter)
        with torch.no_grad():
            best = max(best, float((layer(xv).argmax(1) == yv).float().mean()))
    return best


def sklearn_grid(x, y, xv, yv, max_iter: int) -> float:
    n = len(y)
    model = LogisticRegression(warm_start=True, max_iter=max_iter, tol=1e-6)
    best = 0.0
    for wd in DEFAULT_WEIGHT_DECAYS:
        model.set_params(C=1 / (2 * wd * n))  # same objective: mean CE + wd * ||W||^2
        model.fit(x.numpy(), y.numpy())
        best = max(best, float((model.predict(xv.numpy()) == yv.numpy()).mean()))
    return best


def timed(fn, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    x, y = mixture(args.n, args.dim, args.classes, 0)
    xv, yv = mixture(args.n // 5, args.dim, args.classes, 1)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    x, xv = (x - mean) / std, (xv - mean) / std

    k, it, reps = args.classes, args.max_iter, args.repeats
    rows = [
        ("scikit-learn LogisticRegression (baseline)", timed(lambda: sklearn_grid(x, y, xv, yv, it), reps)),
        ("torch L-BFGS, autograd closure",
         timed(lambda: torch_grid(autograd_fit, x, y, xv, yv, k, it), reps)),
        ("robustssl _lbfgs_fit (hand-written gradient)",
         timed(lambda: torch_grid(_lbfgs_fit, x, y, xv, yv, k, it), reps)),
    ]
    base = rows[0][1][0]
    print(f"linear probe, {len(DEFAULT_WEIGHT_DECAYS)} weight decays, n={args.n}, D={args.dim}, "
          f"K={args.classes}, max_iter={args.max_iter}, threads={args.threads}")
    print(f"{'solver':<46} {'seconds':>8} {'speed-up vs sklearn':>20} {'best val acc':>13}")
    for name, (seconds, acc) in rows:
        print(f"{name:<46} {seconds:>8.2f} {base / seconds:>19.2f}x {acc:>13.4f}")


if __name__ == "__main__":
    main()

"""Does each pretraining method learn, and does the robust one give robustness? (issue #5's quality bars)

For every preset asked for (default: every shipped ``*-tiny`` preset): pretrain it (or reuse a finished run
under ``--runs``), fit a linear probe (SLF: frozen features, L-BFGS, weight decay chosen on the val split) and
measure clean and PGD (L-inf, eps 2, 4 and 8/255, 10 steps, on the probe's cross-entropy) accuracy on the test
split.
The baseline is a random-init encoder of the same architecture with the preset's initial weights.

    python benchmarks/pretrain_quality.py [--presets simclr-scenes-tiny acl-scenes-tiny ...] [--n-test 500]

Prints a table and writes ``<runs>/pretrain_quality.csv``. Not a test: it trains, so it takes minutes.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

import robustssl as rs
from robustssl.finetune.heads import fit_linear_probe
from robustssl.heads.task_model import TaskModel
from robustssl.pretrain import presets as P
from robustssl.runtime import make_generator, seeded_init

EPS_255 = (2, 4, 8)  # PGD budgets, in 1/255
FIELDS = (
    "preset",
    "method",
    "data",
    "encoder",
    "clean_top1",
    *(f"pgd{e}_top1" for e in EPS_255),
    "random_clean_top1",
    *(f"random_pgd{e}_top1" for e in EPS_255),
    "pretrain_seconds",
    "n_test",
)


def evaluate(
    encoder: rs.encoders.Encoder, data: str, data_opts: dict, n_test: int, seed: int
) -> tuple[float, list[float]]:
    opts = {k: v for k, v in data_opts.items() if k not in ("split", "n")}
    sized = {"n": 500} if data.startswith("scenes") else {}
    train = rs.data.load(
        data, split="train", **{**opts, **({"n": data_opts["n"]} if "n" in data_opts else {})}
    )
    val = rs.data.load(data, split="val", **opts, **sized)
    test = rs.data.load(data, split="test", **opts, **sized)
    encoder = encoder.eval()
    head, _ = fit_linear_probe(encoder, train, val)
    model = TaskModel(encoder, head, "classification").eval()
    n = min(n_test, len(test))
    batch = next(test.batches(n, indices=range(n)))
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    robust = []
    for e in EPS_255:
        result = rs.threats.attack(model, x, y, "pgd", eps=e / 255, steps=10, generator=make_generator(seed))
        with torch.no_grad():
            robust.append(float((model(result.x_adv).argmax(1) == y).float().mean()))
    return clean, robust


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--runs", default="runs/pretrain-quality")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", default=None, help="results file (default <runs>/pretrain_quality.csv)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.presets or [n for n in P.list_presets() if n.endswith("-tiny")]
    rows = []
    out = Path(args.csv) if args.csv else Path(args.runs) / "pretrain_quality.csv"
    for name in names:
        preset = P.load_preset(name)
        start = time.perf_counter()
        path = P.pretrain_preset(preset, Path(args.runs) / name, device="cpu")
        seconds = time.perf_counter() - start
        trained = rs.encoders.load(path)
        with seeded_init(int(preset.train.get("seed", 0))):
            random_init = rs.encoders.create(preset.encoder, **preset.encoder_options)
        clean, robust = evaluate(trained, preset.data, preset.data_options, args.n_test, 0)
        r_clean, r_robust = evaluate(random_init, preset.data, preset.data_options, args.n_test, 0)
        row = dict(
            preset=name,
            method=preset.method,
            data=preset.data,
            encoder=preset.encoder,
            clean_top1=round(clean, 4),
            **{f"pgd{e}_top1": round(r, 4) for e, r in zip(EPS_255, robust, strict=True)},
            random_clean_top1=round(r_clean, 4),
            **{f"random_pgd{e}_top1": round(r, 4) for e, r in zip(EPS_255, r_robust, strict=True)},
            pretrain_seconds=round(seconds, 1),
            n_test=args.n_test,
        )
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:  # rewritten after every preset: a long run keeps what it has
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    pgd = "".join(f"{'pgd' + str(e):>8}" for e in EPS_255)
    print(f"\n{'preset':<34}{'clean':>8}{pgd}{'rand clean':>12}{'rand pgd2':>10}{'secs':>8}")
    for r in rows:
        robust = "".join(f"{r[f'pgd{e}_top1']:>8.3f}" for e in EPS_255)
        print(
            f"{r['preset']:<34}{r['clean_top1']:>8.3f}{robust}{r['random_clean_top1']:>12.3f}"
            f"{r['random_pgd2_top1']:>10.3f}{r['pretrain_seconds']:>8.0f}"
        )
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

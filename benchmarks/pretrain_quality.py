"""Does each pretraining method learn, and does the robust one give robustness? (issue #5's quality bars)

For every preset asked for (default: every shipped ``*-tiny`` preset): pretrain it (or reuse a finished run
of the same preset under ``--runs``), fit a linear probe (SLF: frozen features, L-BFGS, weight decay chosen on
the val split) and measure clean and PGD (L-inf, eps 2, 4 and 8/255, 10 steps, on the probe's cross-entropy)
accuracy on the test split.
The baseline is a random-init encoder of the same architecture with the preset's initial weights, probed the
same way on the same test images. Is the margin (probe clean minus random-init clean, in points) clear? The
paired (McNemar) standard error of that difference comes from the test images the two probes disagree on;
``clear`` = margin > 2 paired SE.

Test sets: scenes is synthetic, so ``--n-test`` (default 2000) images; digits has 359. Clean accuracy and the
margin use the whole test set, PGD the first ``--n-pgd`` (default 500) of them.

``--seeds 0 1 2`` pretrains each preset once per training seed (the preset's own seed in ``<runs>/<preset>``,
seed k in ``<runs>/<preset>.seed<k>``; the seed also draws the initial weights, so each seed has its own
random-init baseline) and adds a ``pooled`` row: the margin averaged over the seeds and its paired standard
error over the test images' seed-averaged correctness. On a small test set (digits: one image is 0.28
points) a single run's margin moves by about a point from seed to seed; the pooled row measures the preset
rather than one draw of it.

    python benchmarks/pretrain_quality.py [--presets simclr-scenes-tiny acl-scenes-tiny ...] [--threads 1]

Prints a table and writes ``<runs>/pretrain_quality.csv``. Not a test: it trains, so it takes minutes (a
finished run is reused, then ``pretrain_seconds`` is the span of its TensorBoard log and ``reused`` is 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
import sys
import time
from pathlib import Path

import torch

import robustssl as rs
from robustssl.finetune.heads import fit_linear_probe
from robustssl.heads.task_model import TaskModel
from robustssl.metrics import paired_standard_error
from robustssl.pretrain import presets as P
from robustssl.runtime import make_generator, seeded_init

EPS_255 = (2, 4, 8)  # PGD budgets, in 1/255
VAL_SCENES = 500  # scenes validation images (weight-decay choice)
FIELDS = (
    "preset",
    "seed",
    "method",
    "data",
    "encoder",
    "clean_top1",
    *(f"pgd{e}_top1" for e in EPS_255),
    "random_clean_top1",
    *(f"random_pgd{e}_top1" for e in EPS_255),
    "margin_points",
    "paired_se_points",
    "clear",
    "n_disagree",
    "pretrain_seconds",
    "reused",
    "n_test",
    "n_pgd",
)


def evaluate(
    encoder: rs.encoders.Encoder, data: str, data_opts: dict, n_test: int, n_pgd: int, seed: int
) -> tuple[torch.Tensor, list[float]]:
    """Per-test-image clean correctness ``(n,)`` bool over the whole test set, and PGD accuracy at each of
    ``EPS_255`` over its first ``n_pgd`` images."""
    opts = {k: v for k, v in data_opts.items() if k not in ("split", "n")}
    scenes = data.startswith("scenes")
    train = rs.data.load(
        data, split="train", **{**opts, **({"n": data_opts["n"]} if "n" in data_opts else {})}
    )
    val = rs.data.load(data, split="val", **opts, **({"n": VAL_SCENES} if scenes else {}))
    test = rs.data.load(data, split="test", **opts, **({"n": n_test} if scenes else {}))
    encoder = encoder.eval()
    head, _ = fit_linear_probe(encoder, train, val)
    model = TaskModel(encoder, head, "classification").eval()
    n = min(n_test, len(test))
    correct = []
    with torch.no_grad():
        for batch in test.batches(500, indices=range(n)):
            correct.append(model(batch["image"]).argmax(1) == batch["label"])
    batch = next(test.batches(min(n_pgd, n), indices=range(min(n_pgd, n))))
    x, y = batch["image"], batch["label"]
    robust = []
    for e in EPS_255:
        result = rs.threats.attack(model, x, y, "pgd", eps=e / 255, steps=10, generator=make_generator(seed))
        with torch.no_grad():
            robust.append(float((model(result.x_adv).argmax(1) == y).float().mean()))
    return torch.cat(correct), robust


def result_row(name: str, preset: P.Preset, seed: int | str, correct: torch.Tensor, robust: list[float],
               r_correct: torch.Tensor, r_robust: list[float], seconds: float | None, reused: bool | None,
               n_pgd: int) -> dict:
    """One CSV row. ``correct``/``r_correct``: per-test-image correctness of the probe and of the random-init
    probe (float; averaged over seeds in a pooled row, whose ``seed`` is ``"pooled"``)."""
    clean, r_clean = float(correct.mean()), float(r_correct.mean())
    margin = 100 * (clean - r_clean)
    se = paired_standard_error(correct, r_correct)
    return dict(
        preset=name,
        seed=seed,
        method=preset.method,
        data=preset.data,
        encoder=preset.encoder,
        clean_top1=round(clean, 4),
        **{f"pgd{e}_top1": round(r, 4) for e, r in zip(EPS_255, robust, strict=True)},
        random_clean_top1=round(r_clean, 4),
        **{f"random_pgd{e}_top1": round(r, 4) for e, r in zip(EPS_255, r_robust, strict=True)},
        margin_points=round(margin, 2),
        paired_se_points=round(se, 2),
        clear=int(margin > 2 * se),
        n_disagree=int((correct != r_correct).sum()),
        pretrain_seconds=None if seconds is None else round(seconds, 1),
        reused=None if reused is None else int(reused),
        n_test=len(correct),
        n_pgd=min(n_pgd, len(correct)),
    )


def logged_seconds(run: Path) -> float | None:
    """Wall seconds from the first to the last event of a run's TensorBoard log: how long a reused run took to
    train (the trainer writes an event, ``wall_time`` its first field, at the start and every logged step)."""
    times = []
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        raw, i = path.read_bytes(), 0
        while i + 12 <= len(raw):
            (length,) = struct.unpack_from("<Q", raw, i)
            event = raw[i + 12 : i + 12 + length]
            i += 16 + length
            if event[:1] == b"\x09":  # field 1 (wall_time), wire type 1 (64-bit double)
                times.append(struct.unpack_from("<d", event, 1)[0])
    return max(times) - min(times) if len(times) > 1 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--runs", default="runs/pretrain-quality")
    parser.add_argument("--n-test", type=int, default=2000, help="scenes test images (digits: all 359)")
    parser.add_argument("--n-pgd", type=int, default=500, help="PGD on the first N test images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", default=None, help="results file (default <runs>/pretrain_quality.csv)")
    parser.add_argument("--reuse-only", action="store_true",
                        help="only evaluate finished runs under --runs; a preset without one is an error")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="training seeds (default: the preset's own); several add a pooled row")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds is not None and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        parser.error(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    names = args.presets or [n for n in P.list_presets() if n.endswith("-tiny")]
    rows = []
    out = Path(args.csv) if args.csv else Path(args.runs) / "pretrain_quality.csv"
    # random-init results, one per (architecture, seed, data): presets sharing them share the baseline
    baselines: dict[str, tuple[torch.Tensor, list[float]]] = {}

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:  # rewritten after every row: a long run keeps what it has
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    for name in names:
        base = P.load_preset(name)
        own_seed = int(base.train.get("seed", 0))
        per_seed = []
        for seed in args.seeds or [own_seed]:
            preset = base if seed == own_seed else P.override(base, [f"train.seed={seed}"])
            run = Path(args.runs) / (name if seed == own_seed else f"{name}.seed{seed}")
            marker = run / "preset.json"
            written = json.loads(marker.read_text()) if marker.exists() else {}
            reused = written.get("digest") == preset.digest() and bool(written.get("finished"))
            if args.reuse_only and not reused:
                parser.error(f"--reuse-only: {run} holds no finished run of the current {name!r} preset "
                             f"with seed {seed}")
            start = time.perf_counter()
            path = P.pretrain_preset(preset, run, device="cpu")
            seconds = logged_seconds(run) if reused else time.perf_counter() - start
            trained = rs.encoders.load(path)
            correct, robust = evaluate(trained, preset.data, preset.data_options, args.n_test, args.n_pgd, 0)
            key = json.dumps([preset.encoder, preset.encoder_options, seed, preset.data, preset.data_options],
                             sort_keys=True, default=str)
            if key not in baselines:
                with seeded_init(seed):
                    random_init = rs.encoders.create(preset.encoder, **preset.encoder_options)
                baselines[key] = evaluate(
                    random_init, preset.data, preset.data_options, args.n_test, args.n_pgd, 0
                )
            r_correct, r_robust = baselines[key]
            per_seed.append((correct, robust, r_correct, r_robust, seconds))
            rows.append(result_row(name, preset, seed, correct.float(), robust, r_correct.float(), r_robust,
                                   seconds, reused, args.n_pgd))
            print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
            write()
        if len(per_seed) > 1:
            correct, robust, r_correct, r_robust = (
                torch.stack([torch.as_tensor(r[i], dtype=torch.float) for r in per_seed]).mean(0)
                for i in range(4)
            )
            times = [r[4] for r in per_seed if r[4] is not None]
            seconds = sum(times) / len(times) if times else None
            rows.append(result_row(name, base, "pooled", correct, robust.tolist(), r_correct,
                                   r_robust.tolist(), seconds, None, args.n_pgd))
            print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
            write()
    pgd = "".join(f"{'pgd' + str(e):>8}" for e in EPS_255)
    print(f"\n{'preset':<34}{'seed':>7}{'clean':>8}{pgd}{'rand clean':>12}{'rand pgd2':>10}{'margin':>8}"
          f"{'SE':>6}{'clear':>6}{'secs':>8}")
    for r in rows:
        robust = "".join(f"{r[f'pgd{e}_top1']:>8.3f}" for e in EPS_255)
        secs = "?" if r["pretrain_seconds"] is None else f"{r['pretrain_seconds']:.0f}"
        print(
            f"{r['preset']:<34}{r['seed']:>7}{r['clean_top1']:>8.3f}{robust}{r['random_clean_top1']:>12.3f}"
            f"{r['random_pgd2_top1']:>10.3f}{r['margin_points']:>+8.2f}{r['paired_se_points']:>6.2f}"
            f"{'yes' if r['clear'] else 'NO':>6}{secs:>8}"
        )
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

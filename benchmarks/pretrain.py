"""Trainer overhead per pretraining method, and bf16 autocast (issue #5's benchmark; not a timed test).

For each method, its ``<method>-scenes-tiny`` preset is run for ``--steps`` steps (batch ``--batch``) twice,
side by side in this process: by the trainer (``robustssl.pretrain.train``: batch assembly from the seeded
order, autocast context, NaN check, scheduler, logging; no files written) and by a plain PyTorch loop doing
the same forward/backward passes on the same batches (``loss = method.training_loss(batch, g);
loss.backward(); opt.step()``). Reported: seconds per step, the ratio trainer / plain loop (the bar: ≤ 1.10),
and the trainer's bf16 / fp32 step-time ratio. Each timing is the best of ``--repeats`` runs, alternating.

    python benchmarks/pretrain.py [--methods simclr acl ...] [--steps 10] [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time

import torch

from robustssl.pretrain import METHODS
from robustssl.pretrain import presets as P
from robustssl.pretrain.trainer import TrainConfig, _batch_indices, build_optimizer, lr_factor, train
from robustssl.runtime import make_generator


def _preset(method: str, steps: int, batch: int) -> P.Preset | None:
    name = f"{method}-scenes-tiny"
    if name not in P.list_presets():
        return None
    return P.override(
        P.load_preset(name),
        [
            f"train.steps={steps}",
            f"train.batch_size={batch}",
            "train.warmup_steps=0",
            "train.epochs=null",
            "train.log_every=0",
            "train.monitor_every=0",
            "train.tensorboard=false",
            "data_options.n=512",
        ],
    )


def plain_loop(method, dataset, config: TrainConfig) -> float:
    optimizer = build_optimizer(method.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.steps, 0))
    gen = make_generator(config.seed + 1)
    method.train()
    batches = []
    for step in range(config.steps):
        idx = _batch_indices(len(dataset), config.batch_size, config.seed, step)
        batches.append({**next(dataset.batches(len(idx), indices=idx)), "index": idx})
    start = time.perf_counter()
    for batch in batches:
        loss, _ = method.training_loss(batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / config.steps


def trainer_loop(method, dataset, config: TrainConfig) -> float:
    summary = train(method, dataset, config)
    return summary["seconds"] / config.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or [m for m in METHODS.names() if not m.startswith("test-")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.batch}"
    )
    print(f"{'method':<18}{'plain s/step':>14}{'trainer s/step':>16}{'trainer/plain':>15}{'bf16/fp32':>11}")
    for name in methods:
        preset = _preset(name, args.steps, args.batch)
        if preset is None:
            print(f"{name:<18}  (no {name}-scenes-tiny preset; skipped)")
            continue
        method, dataset, config = P.build(preset)[:3]
        config.device = "cpu"
        method.setup(dataset, torch.device("cpu"), make_generator(config.seed + 2))
        initial = copy.deepcopy(method.state_dict())
        plain, trainer, bf16 = [], [], []
        for _ in range(args.repeats):
            method.load_state_dict(initial)
            plain.append(plain_loop(method, dataset, config))
            method.load_state_dict(initial)
            trainer.append(trainer_loop(method, dataset, config))
            method.load_state_dict(initial)
            bf16.append(trainer_loop(method, dataset, dataclasses.replace(config, precision="bf16")))
        p, t, b = min(plain), min(trainer), min(bf16)
        print(f"{name:<18}{p:>14.4f}{t:>16.4f}{t / p:>15.3f}{b / t:>11.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data throughput: scenes generation, ``batches()`` for in-memory sets, an image folder through a DataLoader,
and the SimCLR views; each as images/s next to a baseline measured in the same run.

Baselines: ``torch.rand`` filling the same tensors (generation and views), and a plain tensor-indexing loop
over a uint8 tensor of the same size (loading). A ratio of 1.0 means "as fast as the baseline".

    python benchmarks/data.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robustssl import data
from robustssl.data import scenes
from robustssl.data.views import SimCLRViews


def best_rate(fn: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Images per second of the fastest of ``repeats`` calls (``fn`` returns how many images it produced), by
    wall clock and by this process's CPU time. On a machine shared with other jobs the CPU-time rate is what
    the code would reach alone on its threads; DataLoader workers' CPU time is not counted in it."""
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        n = fn()
        best_wall = max(best_wall, n / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, n / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def rand_like_scenes(n: int, size: int) -> int:
    gen = torch.Generator().manual_seed(0)
    torch.rand(n, 3, size, size, generator=gen)
    torch.rand(n, size, size, generator=gen)
    torch.randint(0, 7, (n, size, size), generator=gen)
    return n


def index_loop(images: torch.Tensor, batch_size: int) -> int:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(order), batch_size):
        images[order[start:start + batch_size]].float().div_(255)
    return len(images)


def drain(batches) -> int:
    return sum(len(b["image"]) for b in batches)


def write_folder(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "test" / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One thread by default: on a 2-core machine shared with other jobs, two OpenMP threads spend most of
    # their time at barriers (measured: 5-10x slower for elementwise-heavy scene rendering).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, tuple[float, float], str, tuple[float, float]]] = []

    def add(name: str, rate: tuple[float, float], baseline_name: str, baseline: tuple[float, float]) -> None:
        rows.append((name, rate, baseline_name, baseline))

    for size, n in ((32, 2048), (224, 64)):
        rate = best_rate(lambda n=n, size=size: len(scenes.generate(n, size=size)["label"]), args.repeats)
        base = best_rate(lambda n=n, size=size: rand_like_scenes(n, size), args.repeats)
        add(f"scenes generate {size}x{size}", rate, "torch.rand same tensors", base)

    for name, kw in (("scenes", dict(n=4096)), ("digits", {})):
        ds = data.load(name, split="train" if name == "digits" else "test", **kw)
        gen = torch.Generator().manual_seed(0)
        rate = best_rate(lambda ds=ds, gen=gen: drain(ds.batches(256, shuffle=True, generator=gen)),
                         args.repeats)
        raw = torch.randint(0, 256, (len(ds), *ds.image_shape), dtype=torch.uint8)
        base = best_rate(lambda raw=raw: index_loop(raw, 256), args.repeats)
        add(f"{name} batches(256, shuffle)", rate, "uint8 index loop", base)

    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), 512, 64)
        ds = data.load("imagefolder", root=tmp, split="test", size=32)
        raw = torch.randint(0, 256, (len(ds), 3, 32, 32), dtype=torch.uint8)
        base = best_rate(lambda: index_loop(raw, 64), args.repeats)
        for workers in (0, 2):
            rate = best_rate(lambda w=workers: drain(ds.batches(64, num_workers=w)), args.repeats)
            add(f"imagefolder 64px->32 workers={workers}", rate, "uint8 index loop", base)

    x = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    views = SimCLRViews()
    vgen = torch.Generator().manual_seed(0)
    rate = best_rate(lambda: len(views(x, vgen)), args.repeats)
    base = best_rate(lambda: len(torch.rand(256, 3, 32, 32, generator=vgen)), args.repeats)
    add("SimCLRViews 256x3x32x32", rate, "torch.rand same batch", base)

    print(f"threads={args.threads} repeats={args.repeats} (best of); rates in images/s, wall clock and "
          "(in brackets) this process's CPU time")
    print(f"{'workload':36s} {'wall':>8s} {'(cpu)':>8s}  {'baseline':24s} {'wall':>8s} {'(cpu)':>8s} "
          f"{'ratio':>7s}")
    for name, (wall, cpu), base_name, (base_wall, base_cpu) in rows:
        print(f"{name:36s} {wall:8.0f} {f'({cpu:.0f})':>8s}  {base_name:24s} {base_wall:8.0f} "
              f"{f'({base_cpu:.0f})':>8s} {wall / base_wall:7.4f}")


if __name__ == "__main__":
    main()

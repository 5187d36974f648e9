"""Data parallelism under ``torchrun``: one process per device, gloo on CPU, NCCL on CUDA.

``torchrun --nproc_per_node=N -m robustssl ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT``; ``init()`` reads them and starts the process group once. Without them
(a plain ``python -m robustssl``) everything here is the single-process identity: rank 0 of 1.

Rules the rest of the code keeps: only rank 0 writes files (``is_main()``); work is split with
``shard(items)`` (rank r takes items r, r + N, ...); results come back with ``gather_objects``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> bool:
    """True when this process was started by ``torchrun`` (or anything setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: torch.device | None = None, backend: str | None = None) -> bool:
    """Start the process group from torchrun's environment if launched and not yet started.

    ``backend`` defaults to NCCL when ``device`` is CUDA, else gloo. On CUDA, each process takes the GPU of
    its ``LOCAL_RANK``. Returns whether a process group is active.
    """
    if active() or not launched():
        return active()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    cuda = device is not None and device.type == "cuda"
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA under torchrun, else ``device``."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """Rank ``r`` of ``N`` takes items ``r, r + N, r + 2N, ...`` (all of them in a single process)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if not 0 <= rank_ < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank_}")
    return list(items[rank_::world])


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean of ``tensor`` over ranks (identity in a single process); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the sum over ranks of the gradient of its part
    (every rank's loss may depend on every rank's inputs). Works on any backend (gloo has no reduce-scatter,
    so the backward is an all-reduce followed by taking this rank's slice)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.batch = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0 (equal B on every rank), with gradients flowing
    back to each rank's part (for contrastive losses over the global batch). Identity in a single process."""
    if not active() or world_size() == 1:
        return x
    sizes = gather_objects(int(x.shape[0]))
    if len(set(sizes)) != 1:
        raise ValueError(f"all_gather_with_grad needs the same batch on every rank, got {sizes}")
    return _GatherWithGrad.apply(x)


def shutdown() -> None:
    """End the process group once every rank is done: a barrier, ``destroy_process_group``, then a garbage
    collection, so that a process group still held by reference cycles (a DDP wrapper and its reducer) is
    destroyed, and Gloo's worker threads joined, while the interpreter is alive. Otherwise that happens during
    interpreter finalization, where a worker thread dropping the last reference to a finished collective's
    tensors needs the GIL and aborts the process ("terminate called without an active exception"; about one
    two-rank run in twelve on this project's CPU machine, after all of its work was done). Call it on the
    success path only: after a rank has failed, the barrier would wait for it forever."""
    if active():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()

"""A standard (non-adversarial) pretrained encoder that a robust method needs as a helper, trained on demand
by the tool and cached: AdvCL's feature encoder for pseudo-labels, DeACL's teacher.

``standard_pretrained(template, "simclr", dataset, ...)`` rebuilds ``template``'s architecture (same registry
name and constructor options) from a fixed seed, trains it with the named method for a short budget, and
stores it as an encoder checkpoint under ``cache_dir``. The file name is a hash of everything that decides the
result (method, initial weights, budget, seed, dataset fingerprint), so a rerun or a resumed run loads the
file instead of training again, and any change trains a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from robustssl.encoders.base import Encoder
from robustssl.runtime import get_logger, seeded_init

log = get_logger(__name__)

#: images hashed into a dataset fingerprint (evenly spaced)
FINGERPRINT_SAMPLES = 16


def default_cache_dir() -> Path:
    """``$ROBUSTSSL_CACHE`` (default ``~/.cache/robustssl``)."""
    return Path(os.environ.get("ROBUSTSSL_CACHE", "~/.cache/robustssl")).expanduser()


def state_hash(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``module``'s state dict."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Name, split, size, image shape and a sha256 of ``FINGERPRINT_SAMPLES`` evenly spaced images."""
    n = len(dataset)
    digest = hashlib.sha256()
    picks = {round(j * (n - 1) / max(1, FINGERPRINT_SAMPLES - 1)) for j in range(FINGERPRINT_SAMPLES)}
    for i in sorted(picks):
        image = dataset[i]["image"].detach().to("cpu", torch.float32).contiguous()
        digest.update(image.numpy().tobytes())
    return {"name": getattr(dataset, "name", type(dataset).__name__),
            "split": getattr(dataset, "split", None), "size": n,
            "image_shape": list(getattr(dataset, "image_shape", None) or []),
            "pixels_sha256": digest.hexdigest()}


def rebuild(template: Encoder, seed: int, who: str) -> Encoder:
    """A fresh encoder of ``template``'s architecture (``create(template.name, **template.config)``), its
    initial weights drawn from ``seed``."""
    from robustssl.encoders.factory import create

    try:
        with seeded_init(seed):
            return create(template.name, **template.config)
    except Exception as exc:
        raise ValueError(
            f"{who}: cannot rebuild encoder {template.name!r} with {template.config} to pretrain a standard "
            "encoder; pass a checkpoint path instead"
        ) from exc


def standard_pretrained(template: Encoder, method: str, dataset: Any, device: torch.device, *, steps: int,
                        batch_size: int, lr: float, seed: int, options: dict[str, Any] | None = None,
                        cache_dir: str | os.PathLike | None = None, who: str = "pretrain") -> Encoder:
    """``template``'s architecture pretrained with ``method`` (keyword ``options``) on ``dataset`` for
    ``steps`` SGD steps (batch ``batch_size``, lr ``lr``, weight decay 5e-4, 10% warm-up, cosine), initial
    weights and data order from ``seed``; loaded from ``cache_dir`` when the same run was cached before.
    Returned on ``device`` in eval mode."""
    from robustssl.encoders.checkpoints import load, save
    from robustssl.pretrain.method import build_method
    from robustssl.pretrain.trainer import TrainConfig, train

    encoder = rebuild(template, seed, who)
    batch_size = min(batch_size, len(dataset))
    options = dict(options or {})
    recipe = {"method": method, "options": options, "steps": steps, "batch_size": batch_size, "lr": lr,
              "weight_decay": 5e-4, "warmup_steps": steps // 10, "seed": seed}
    key = {"recipe": recipe, "init_sha256": state_hash(encoder), "dataset": dataset_fingerprint(dataset)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"{method}-{digest}.safetensors"
    if path.is_file():
        try:
            cached = load(path)
        except (ValueError, OSError) as exc:  # a truncated or tampered file: train again
            log.warning("%s: ignoring unreadable cached encoder %s (%s)", who, path, exc)
        else:
            log.info("%s: %s-pretrained encoder from cache %s", who, method, path)
            return cached.to(device).eval()
    config = TrainConfig(steps=steps, batch_size=batch_size, optimizer="sgd", lr=lr, weight_decay=5e-4,
                         warmup_steps=steps // 10, device=str(device), seed=seed, log_every=0)
    log.info("%s: pretraining a %s encoder (%d steps) on %s", who, method, steps, key["dataset"]["name"])
    trained = build_method(method, encoder, **options)
    train(trained, dataset, config, method_name=method)
    folder.mkdir(parents=True, exist_ok=True)
    save(trained.encoder, path, method=method, config={**recipe, "dataset": key["dataset"]})
    return trained.encoder.to(device).eval()

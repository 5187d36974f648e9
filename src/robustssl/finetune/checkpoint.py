"""Fine-tuned ``TaskModel`` checkpoints: a folder of safetensors files and one JSON description.

``save_task_model(model, "runs/ft")`` writes

- ``encoder.safetensors`` + ``encoder.json``: the encoder, by :func:`robustssl.encoders.save` (so
  ``robustssl attack --encoder runs/ft/encoder.safetensors`` and ``robustssl.encoders.load`` read it too);
- ``head.safetensors``: the head's state (:func:`robustssl.encoders.save_state`);
- ``model.json``: format, task, the head's type and constructor arguments, both files' sha256, and the
  caller's ``info`` (fine-tuning summary, metrics). Written last, so a folder without it is incomplete.

``load_task_model("runs/ft")`` (or ``.../model.json``) rebuilds the model, verifying both hashes and loading
every tensor strictly; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustssl.encoders.checkpoints import (
    _json_text,
    _write_atomic,
    load_state,
    save,
    save_state,
    sha256_file,
)
from robustssl.encoders.checkpoints import load as load_encoder
from robustssl.heads.classifier import LinearClassifier
from robustssl.heads.depth import DepthHead
from robustssl.heads.segmentation import SegmentationHead
from robustssl.heads.task_model import TaskModel

FORMAT = "robustssl.task_model/1"
MODEL_FILE, ENCODER_FILE, HEAD_FILE = "model.json", "encoder.safetensors", "head.safetensors"
HEAD_TYPES = {"linear": LinearClassifier, "segmentation": SegmentationHead, "depth": DepthHead}


def head_config(head: nn.Module) -> dict[str, Any]:
    """``{"type": ..., "kwargs": {...}}`` that rebuilds ``head`` (weights aside)."""
    if isinstance(head, LinearClassifier):
        return {"type": "linear", "kwargs": {"in_dim": head.in_dim, "num_classes": head.num_classes}}
    if isinstance(head, SegmentationHead):
        return {"type": "segmentation", "kwargs": {"in_dim": head.in_dim, "num_classes": head.num_classes}}
    if isinstance(head, DepthHead):
        return {"type": "depth", "kwargs": {"in_dim": head.in_dim, "mode": head.mode, "n_bins": head.n_bins,
                                            "min_depth": head.min_depth, "max_depth": head.max_depth,
                                            "bin_spacing": head.bin_spacing}}
    raise TypeError(f"cannot save a {type(head).__name__} head; accepted: LinearClassifier, "
                    "SegmentationHead, DepthHead")


def save_task_model(model: TaskModel, directory: str | os.PathLike, *,
                    info: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a classification, segmentation or depth ``TaskModel``) into ``directory``; ``info``
    must be JSON-serializable. Returns the path of ``model.json``."""
    if not isinstance(model, TaskModel) or model.head is None:
        raise TypeError(f"save_task_model expects a TaskModel with a head, got {type(model).__name__}"
                        + (f" (task {model.task!r})" if isinstance(model, TaskModel) else ""))
    config = head_config(model.head)
    info_json = json.loads(_json_text(dict(info or {}), "info"))
    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    method = f"finetune:{info_json['protocol']}" if "protocol" in info_json else "finetune"
    encoder_file = save(model.encoder, folder / ENCODER_FILE, method=method)
    head_file = save_state(folder / HEAD_FILE, {"format": FORMAT, "task": model.task,
                                                "state": model.head.state_dict()})
    from robustssl import __version__

    encoder_entry = {"file": ENCODER_FILE, "name": model.encoder.name, "sha256": sha256_file(encoder_file)}
    meta = {"format": FORMAT, "task": model.task, "encoder": encoder_entry,
            "head": {**config, "file": HEAD_FILE, "sha256": sha256_file(head_file)},
            "robustssl_version": __version__, "torch_version": torch.__version__, "info": info_json}
    text = _json_text(meta, "task model description")
    path = folder / MODEL_FILE
    _write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


def _read_description(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt task model description {path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not a robustssl task model (format {got!r}, expected {FORMAT!r})")
    return meta


def _verified(folder: Path, entry: Any, what: str, model_file: Path) -> Path:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise ValueError(f"{model_file}: key {what!r} must name its file")
    file = folder / entry["file"]
    if not file.is_file():
        raise FileNotFoundError(f"{model_file} names {what} file {file}, which does not exist")
    digest = sha256_file(file)
    if digest != entry.get("sha256"):
        raise ValueError(f"sha256 mismatch for {file}: {model_file.name} records {entry.get('sha256')}, the "
                         f"file hashes to {digest}; it was modified or truncated after saving")
    return file


def load_task_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TaskModel:
    """Rebuild a ``TaskModel`` written by :func:`save_task_model` (the folder or its ``model.json``), in eval
    mode on ``map_location``. Hashes are verified and every tensor must fit (strict loading)."""
    path = Path(path).expanduser()
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(f"task model not found: {model_file} (expected a folder written by "
                                "save_task_model / robustssl finetune --out)")
    meta = _read_description(model_file)
    folder = model_file.parent
    encoder_file = _verified(folder, meta.get("encoder"), "encoder", model_file)
    head_file = _verified(folder, meta.get("head"), "head", model_file)
    head_type = meta["head"].get("type")
    if head_type not in HEAD_TYPES:
        raise ValueError(f"{model_file}: unknown head type {head_type!r}; accepted: {', '.join(HEAD_TYPES)}")
    encoder = load_encoder(encoder_file, strict=True)
    head = HEAD_TYPES[head_type](**meta["head"].get("kwargs", {}))
    state = load_state(head_file)
    try:
        head.load_state_dict(state["state"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{head_file} does not fit a {head_type} head {meta['head'].get('kwargs')}: "
                         f"{exc}") from exc
    return TaskModel(encoder, head, meta["task"]).to(map_location).eval()


def read_task_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``info`` stored with a task model (the folder or its ``model.json``), without loading weights."""
    path = Path(path).expanduser()
    return _read_description(path / MODEL_FILE if path.is_dir() else path).get("info", {})

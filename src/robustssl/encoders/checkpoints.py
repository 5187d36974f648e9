"""Encoder checkpoints: safetensors weights + a JSON sidecar; safe loading of foreign files.

``save(encoder, "runs/x/encoder")`` writes ``runs/x/encoder.safetensors`` and ``runs/x/encoder.json`` (encoder
name, constructor arguments, method, epoch, config, extra, robustssl/torch versions, dims, the sha256 of the
weights file). The name and constructor arguments are also stored in the safetensors header, so the weights
file alone still rebuilds the encoder (without the hash check). Writes are atomic: each file is written to a
temporary file in the same folder and moved into place with ``os.replace``.

``load(path)`` rebuilds the encoder from that metadata and verifies the hash. Foreign files need the
architecture: ``load(path, name="resnet18_cifar")``. ``.pt``/``.pth``/``.ckpt`` files are read ONLY with
``torch.load(weights_only=True)``; a pickle that would construct arbitrary objects or call functions is
refused before anything in it runs. Foreign layouts are mapped onto the encoder (:func:`match_state_dict`):
wrapper keys (``state_dict``, ``model``, ``teacher``, ...), prefixes (``module.``, ``backbone.``,
``encoder_q.``, ...), the ``shortcut`` and ``bn_list`` layouts of ACL/AdvCL-style ResNets, timm names for
``timm:`` encoders; projection and classification heads are dropped; ViT position embeddings are resampled to
the model's grid.

``save_state``/``load_state`` store any nested structure of tensors and plain values (optimizer, heads,
trainer state) in one safetensors file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.encoders.batchnorm import DualBatchNorm2d, get_bn_branch, set_bn_branch
from robustssl.encoders.factory import create
from robustssl.runtime.logging import get_logger

FORMAT = "robustssl.encoder/1"
STATE_FORMAT = "robustssl.state/1"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
# Wrapper keys of training checkpoints whose value holds the weights (DINO keeps "teacher" and "student").
WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "teacher", "student", "encoder",
                "backbone", "net", "network", "module", "params")
# Among equally good key prefixes, prefer the online/query network over momentum copies.
PREFERRED_PREFIXES = ("", "backbone.", "encoder.", "encoder_q.", "base_encoder.", "online_network.", "model.",
                      "net.", "teacher.", "student.", "momentum_backbone.", "encoder_k.", "momentum_encoder.")
# Heads of SSL methods and classifiers: not part of an encoder, dropped without a warning.
HEAD_PREFIXES = ("fc.", "head.", "heads.", "linear.", "classifier.", "projector.", "projection.",
                 "proj_head.", "projection_head.", "predictor.", "prototypes.", "mlp_head.", "decoder",
                 "mask_token", "head_drop.")
# (old, new) substrings: kuangliu/ACL/AdvCL ResNets name the skip path "shortcut"; ACL's dual BN is a list.
KEY_RENAMES = ((".shortcut.", ".downsample."), (".bn_list.0.", ".clean."), (".bn_list.1.", ".adv."))

log = get_logger(__name__)


@dataclass
class LoadReport:
    """What ``load`` found: where the weights came from and how their keys mapped onto the encoder."""

    path: str
    format: str  # "robustssl", "safetensors" (foreign) or "torch"
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    sha256_status: str = "not checked"  # "verified", "no sidecar (not checked)", "not applicable"
    prefix: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)


# --- small file helpers ----------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then ``os.replace(tmp, path)``: ``path`` is either the old or the complete new file."""
    tmp = _temp_path(path)
    try:
        write(tmp)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_text(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable (numbers, strings, lists, dicts): {exc}") from exc


def weights_path(path: str | os.PathLike) -> Path:
    """``x`` or ``x.safetensors`` -> ``x.safetensors``."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def sidecar_path(weights: str | os.PathLike) -> Path:
    """``x.safetensors`` -> ``x.json``."""
    return Path(weights).with_suffix(".json")


def _cpu_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Clones: safetensors refuses tensors that share storage (tied weights) or are non-contiguous views.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


# --- save -----------------------------------------------------------------------------------------------
def _current_bn_branch(encoder: nn.Module) -> str | None:
    """The branch of the dual batch-norm layers (``"clean"``/``"adv"``), or None without any."""
    if not any(isinstance(m, DualBatchNorm2d) for m in encoder.modules()):
        return None
    return get_bn_branch(encoder)


def save(encoder: Encoder, path: str | os.PathLike, *, method: str | None = None, epoch: int | None = None,
         config: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<path>.safetensors`` (or ``path`` if it ends in .safetensors) and its ``.json`` sidecar.

    ``config``/``extra`` must be JSON-serializable. Returns the weights path.
    """
    if not isinstance(encoder, Encoder):
        raise TypeError(f"save expects an Encoder, got {type(encoder).__name__}")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise ValueError(f"epoch must be a non-negative int or None, got {epoch!r}")
    from robustssl import __version__

    weights = weights_path(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    encoder_config = json.loads(_json_text(encoder.config, f"encoder config of {encoder.name!r}"))
    header = {"format": FORMAT, "name": encoder.name, "robustssl_version": __version__,
              "encoder_config": json.dumps(encoder_config, sort_keys=True)}
    tensors = _cpu_tensors(encoder.state_dict())
    meta = {
        "format": FORMAT,
        "name": encoder.name,
        "encoder_config": encoder_config,
        "method": method,
        "epoch": epoch,
        "config": dict(config) if config is not None else None,
        "extra": dict(extra) if extra is not None else None,
        "robustssl_version": __version__,
        "torch_version": torch.__version__,
        "embed_dim": encoder.embed_dim,
        "dense_dim": encoder.dense_dim,
        "stride": encoder.stride,
        "num_parameters": sum(p.numel() for p in encoder.parameters()),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_file": weights.name,
        # dual-BN encoders (ACL, AdvCL) are used downstream through one branch; load() restores it
        "bn_branch": _current_bn_branch(encoder),
    }
    _json_text(meta, "checkpoint metadata (method, config, extra)")
    # Both files are complete under temporary names before either replaces an existing checkpoint.
    tmp_weights, tmp_sidecar = _temp_path(weights), _temp_path(sidecar_path(weights))
    try:
        save_file(tensors, str(tmp_weights), metadata=header)
        meta["sha256"] = sha256_file(tmp_weights)
        tmp_sidecar.write_text(_json_text(meta, "checkpoint metadata"))
        _commit(tmp_weights, weights)
        _commit(tmp_sidecar, sidecar_path(weights))
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    return weights


# --- reading files --------------------------------------------------------------------------------------
def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix == ".json":
            meta = _read_sidecar(p)
            if meta.get("format") != FORMAT or not meta.get("weights_file"):
                raise ValueError(f"{p} is not a robustssl checkpoint sidecar (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r}); pass the .safetensors or .pt file instead")
            return p.with_name(str(meta["weights_file"]))
        return p
    candidate = weights_path(p)
    if candidate.is_file():
        return candidate
    tried = f"{p}" if candidate == p else f"{p} or {candidate}"
    raise FileNotFoundError(f"checkpoint not found: {tried}")


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt checkpoint metadata {path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"corrupt checkpoint metadata {path}: expected a JSON object, "
                         f"got {type(meta).__name__}")
    return meta


def _safetensors_header(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"corrupt or unreadable safetensors file {path}: {exc}") from exc


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"corrupt or unreadable safetensors file {path}: {exc}") from exc


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what to do.

    A pickle that references anything but tensors and plain containers is refused by PyTorch's restricted
    unpickler before any of it is executed.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"refused to load {path}: it holds pickled Python objects beyond tensors and plain containers, "
            f"which could run code when unpickled (torch.load(weights_only=True) said: {first}). robustssl "
            "never unpickles code; if you trust the file, re-save its state_dict with safetensors") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"corrupt or unreadable PyTorch file {path}: {exc}") from exc


# --- mapping foreign layouts ----------------------------------------------------------------------------
def _tensor_dicts(obj: Any, depth: int = 0) -> list[dict[str, torch.Tensor]]:
    """Candidate flat {key: tensor} dicts: the object's own tensors and those under wrapper keys."""
    if not isinstance(obj, Mapping) or depth > 3:
        return []
    found = []
    own = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if own:
        found.append(own)
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            found.extend(_tensor_dicts(obj[key], depth + 1))
    return found


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _prefixes(keys: list[str]) -> list[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for n in (1, 2):
            if len(parts) > n:
                found.add(".".join(parts[:n]) + ".")
    return sorted(found, key=lambda p: (PREFERRED_PREFIXES.index(p) if p in PREFERRED_PREFIXES else 99, p))


def _grid_tokens(n: int) -> tuple[int, int] | None:
    """(prefix tokens, grid side) for a position embedding with n tokens, or None."""
    for prefix in (1, 0):
        side = math.isqrt(max(n - prefix, 0))
        if side > 0 and side * side == n - prefix:
            return prefix, side
    return None


def _fit_tensor(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``value`` if its shape fits ``target``; a resampled position embedding; else None."""
    if value.shape == target.shape:
        return value
    same_width = value.dim() == 3 and target.dim() == 3 and value.shape[2] == target.shape[2]
    if key.endswith("pos_embed") and same_width:
        src, dst = _grid_tokens(value.shape[1]), _grid_tokens(target.shape[1])
        if src and dst and src[0] == dst[0]:
            from robustssl.encoders.vit import resample_pos_embed

            return resample_pos_embed(value, (src[1], src[1]), (dst[1], dst[1]), num_prefix=src[0])
    return None


def _target_keys(key: str, target: Mapping[str, torch.Tensor], target_prefix: str) -> list[str]:
    """Encoder keys for a source key (prefix stripped): itself, renamed, or both BN branches."""
    key = target_prefix + key
    if key in target:
        return [key]
    for old, new in KEY_RENAMES:
        if old in key and key.replace(old, new) in target:
            return [key.replace(old, new)]
    # A single-BN checkpoint initialises both branches of a dual-BN encoder.
    stem, _, leaf = key.rpartition(".")
    both = [f"{stem}.clean.{leaf}", f"{stem}.adv.{leaf}"]
    if stem and all(k in target for k in both):
        return both
    return []


def match_state_dict(source: Any, target: Mapping[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a foreign checkpoint object onto the keys and shapes of ``target`` (an encoder's state_dict).

    Tries every tensor dict in ``source`` (top level and wrapper keys) against every key prefix and keeps the
    combination that fills the most encoder tensors. Returns the mapped state and a report (prefix, missing,
    unexpected, dropped heads, ignored other networks, resampled keys). Shape conflicts raise ``ValueError``.
    """
    target_prefixes = [""]
    first = {k.split(".")[0] for k in target}
    if len(first) == 1:
        target_prefixes.append(first.pop() + ".")
    best: tuple[int, int] | None = None
    choice: tuple[dict[str, torch.Tensor], str, str] | None = None
    for cand_index, cand in enumerate(_tensor_dicts(source)):
        stripped = {_strip_module(k): v for k, v in cand.items()}
        for prefix in _prefixes(list(stripped)):
            for tprefix in target_prefixes:
                score = sum(1 for k in stripped if k.startswith(prefix) and
                            _target_keys(k[len(prefix):], target, tprefix))
                rank = (score, -cand_index)
                if best is None or rank > best:
                    best, choice = rank, (stripped, prefix, tprefix)
    report = LoadReport(path="", format="", name="")
    if choice is None or best is None or best[0] == 0:
        sample = list(_tensor_dicts(source)[0])[:5] if _tensor_dicts(source) else []
        raise ValueError(f"no tensor of the checkpoint matches the encoder: checkpoint keys look like "
                         f"{sample}, the encoder expects keys like {list(target)[:5]}; is the architecture "
                         "right?")
    stripped, prefix, tprefix = choice
    report.prefix = prefix
    mapped: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in stripped.items():
        if not key.startswith(prefix):
            # Other networks of the checkpoint (momentum copies, heads beside the backbone).
            (report.dropped if key.startswith(HEAD_PREFIXES) else report.ignored).append(key)
            continue
        rest = key[len(prefix):]
        names = _target_keys(rest, target, tprefix)
        if not names:
            (report.dropped if rest.startswith(HEAD_PREFIXES) else report.unexpected).append(key)
            continue
        for name in names:
            fitted = _fit_tensor(name, value, target[name])
            if fitted is None:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs encoder "
                                  f"{tuple(target[name].shape)}")
                continue
            if fitted is not value:
                report.resampled.append(name)
            mapped[name] = fitted
    if mismatched:
        raise ValueError(f"{len(mismatched)} tensor(s) have the wrong shape for this encoder (wrong "
                         f"architecture or options?): {'; '.join(mismatched[:5])}")
    # BN step counters are bookkeeping only, absent from many checkpoints.
    report.missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    return mapped, report


def load_into(encoder: nn.Module, source: Any, *, strict: bool = False,
              where: str = "checkpoint") -> LoadReport:
    """Load a checkpoint object (state dict or training checkpoint) into ``encoder`` with key mapping.

    Missing or unexpected keys are a warning, or a ``ValueError`` with ``strict=True``.
    """
    target = encoder.state_dict()
    mapped, report = match_state_dict(source, target)
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} missing key(s) (left as initialised): {report.missing[:8]}")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected key(s) (not loaded): {report.unexpected[:8]}")
    if problems:
        message = f"{where}: " + "; ".join(problems)
        if strict:
            raise ValueError(message + " (strict=True)")
        warnings.warn(message, stacklevel=3)
    if report.dropped:
        log.info("%s: dropped %d head tensor(s) (%s...)", where, len(report.dropped), report.dropped[0])
    with torch.no_grad():
        for key, value in mapped.items():
            target[key].copy_(value.to(target[key].dtype))
    return report


# --- load -----------------------------------------------------------------------------------------------
def load_with_report(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                     strict: bool = False, *, name: str | None = None,
                     encoder_kwargs: Mapping[str, Any] | None = None) -> tuple[Encoder, LoadReport]:
    """Like :func:`load`, also returning the :class:`LoadReport` (metadata, sha256 status, key mapping)."""
    file = _resolve(path)
    meta: dict[str, Any] = {}
    sha, sha_status = None, "not applicable"
    if file.suffix == ".safetensors":
        sidecar = sidecar_path(file)
        header = _safetensors_header(file)
        if sidecar.is_file():
            meta = _read_sidecar(sidecar)
            sha = sha256_file(file)
            expected = meta.get("sha256")
            if expected != sha:
                raise ValueError(f"sha256 mismatch for {file}: its sidecar {sidecar.name} records "
                                 f"{expected}, the file hashes to {sha}; the weights were modified or "
                                 "truncated after saving")
            sha_status = "verified"
        elif header.get("format") == FORMAT:
            meta = {"name": header.get("name"), "robustssl_version": header.get("robustssl_version"),
                    "encoder_config": json.loads(header.get("encoder_config", "{}"))}
            sha_status = "no sidecar (not checked)"
        source: Any = _load_safetensors(file)
        kind = "robustssl" if meta.get("name") else "safetensors"
    else:
        source, kind = read_torch_file(file), "torch"
    arch = name or meta.get("name")
    if not arch:
        raise ValueError(f"{file} carries no robustssl metadata, so the architecture is unknown; pass it: "
                         "load(path, name='resnet18_cifar') (see robustssl.encoders.names())")
    if str(arch).startswith("module:"):
        raise ValueError(f"{file} was saved from a from_module(...) encoder ({arch}); rebuild that module "
                         "and call robustssl.encoders.checkpoints.load_into(encoder, state) instead")
    kwargs = dict(encoder_kwargs) if encoder_kwargs is not None else (
        dict(meta.get("encoder_config") or {}) if name is None or name == meta.get("name") else {})
    encoder = create(arch, **kwargs)
    report = load_into(encoder, source, strict=strict, where=str(file))
    branch = meta.get("bn_branch")
    if branch is not None:
        if _current_bn_branch(encoder) is None:
            raise ValueError(f"{file}: its metadata names the batch-norm branch {branch!r} but the rebuilt "
                             f"{arch!r} encoder has no dual batch-norm layers (built without dual_bn?)")
        set_bn_branch(encoder, str(branch))
    report.path, report.format, report.name, report.metadata = str(file), kind, str(arch), meta
    report.sha256, report.sha256_status = sha, sha_status
    return encoder.to(map_location).eval(), report


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = False, *,
         name: str | None = None, encoder_kwargs: Mapping[str, Any] | None = None) -> Encoder:
    """Rebuild an encoder from a checkpoint, in eval mode on ``map_location``.

    path: ``x.safetensors``, ``x`` (-> ``x.safetensors``), its ``x.json`` sidecar, or a ``.pt/.pth/.ckpt``
    file (read with ``weights_only=True`` only). name/encoder_kwargs: the architecture for foreign files
    (``load(p, name="resnet18_cifar", encoder_kwargs={"mean": None, "std": None})``). strict: missing or
    unexpected keys raise instead of warning.
    """
    return load_with_report(path, map_location, strict, name=name, encoder_kwargs=encoder_kwargs)[0]


# --- generic state (heads, optimizers, trainer state) ---------------------------------------------------
def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"save_state: dict keys must be str or int, got {k!r} at {where}")
            items.append([k, _encode(v, tensors, f"{where}.{k}")])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        tag = "__list__" if isinstance(obj, list) else "__tuple__"
        return {tag: [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_state: cannot store {type(obj).__name__} at {where}; accepted: tensors, dicts, "
                    "lists, tuples, str, int, float, bool, None")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__list__" in obj:
        return [_decode(v, tensors) for v in obj["__list__"]]
    return tuple(_decode(v, tensors) for v in obj["__tuple__"])


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write a nested structure of tensors and plain values (e.g. ``{"head": head.state_dict(),
    "optimizer": opt.state_dict(), "step": 100}``) to ``path`` (.safetensors appended if missing).
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(dict(state), tensors, "state")
    file = weights_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": STATE_FORMAT, "tree": _json_text(tree, "state")}
    _write_atomic(file, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    return file


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_state`; tensors are moved to ``map_location``."""
    file = _resolve(path)
    header = _safetensors_header(file)
    if header.get("format") != STATE_FORMAT:
        raise ValueError(f"{file} is not a robustssl state file (format {header.get('format')!r}, expected "
                         f"{STATE_FORMAT!r}); encoder checkpoints are read with robustssl.encoders.load")
    tensors = {k: v.to(map_location) for k, v in _load_safetensors(file).items()}
    try:
        tree = json.loads(header["tree"])
        return _decode(tree, tensors)
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt state file {file}: its structure header cannot be decoded "
                         f"({exc})") from exc

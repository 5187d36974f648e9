"""AdvCL (Fan et al., NeurIPS 2021, "When Does Contrastive Learning Preserve Adversarial Robustness from
Pretraining to Finetuning?").

Per image, four positives for a multi-view NT-Xent loss: two strong SimCLR views ``x1, x2`` and the
high-frequency component ``x_hfc`` of a weakly augmented view ``x_w`` (clean batch-norm branch), and the
adversarial version ``x_adv`` of ``x_w`` (adversarial branch). Pseudo-labels from k-means clusterings of
features of a standard-pretrained encoder give a second, supervised-like signal: one linear cluster head per
clustering on the adversarial embedding, ``loss = NT-Xent(4 views) + λ · mean_k CE(head_k, labels_k)``
(λ = 0.2). PGD (eval mode, adversarial branch; L-inf 8/255, 5 steps of 2/255) maximizes that same loss.

Pseudo-labels are computed in :meth:`AdvCL.setup` and cached as a safetensors file whose name is a hash of
the feature encoder's weights, the dataset (name, split, size, image shape, a sample of its pixels), the k's
and the k-means generator: reruns and resumed runs load it instead of recomputing, and any change to those
inputs computes a new one. By default the feature encoder is a short SimCLR run on the training set, itself
cached (``pretrain/standard.py``), so a rerun repeats neither the pretraining nor the clustering.

Deviations from the reference code, for a one-GPU/CPU budget: one adversarial example serves both terms
(the reference attacks the contrastive and the CE term with two examples and three BN branches); the clean
views' projections inside the attack are computed once, in eval mode, instead of at every PGD step; the
paper's k ∈ {2, 10, 50, 100, 500} is capped at ``max_k_fraction`` of the dataset size; features for k-means
are L2-normalized embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from robustssl.data.views import SimCLRViews
from robustssl.encoders.base import Encoder
from robustssl.encoders.batchnorm import bn_branch
from robustssl.encoders.checkpoints import load as load_encoder
from robustssl.pretrain.acl import pgd_settings, require_dual_bn
from robustssl.pretrain.adversarial import eval_mode, maximize
from robustssl.pretrain.clustering import kmeans
from robustssl.pretrain.frequency import high_frequency_view
from robustssl.pretrain.losses import multi_view_nt_xent
from robustssl.pretrain.method import METHODS, PretrainMethod
from robustssl.pretrain.simclr import projector, resolve_views
from robustssl.pretrain.standard import (
    dataset_fingerprint,
    default_cache_dir,
    standard_pretrained,
    state_hash,
)
from robustssl.pretrain.weak_views import PadCropFlip
from robustssl.runtime import get_logger, split_generator

log = get_logger(__name__)

#: the paper's clusterings (Sec. 3.3): k ∈ {2, 10, 50, 100, 500} on CIFAR's 50,000 images
PAPER_KS = (2, 10, 50, 100, 500)
#: AdvCL's RandomResizedCrop area range on CIFAR
ADVCL_CROP_SCALE = (0.2, 1.0)
CACHE_FORMAT = "robustssl.advcl-pseudo-labels/1"


def cluster_heads_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over heads of the mean cross-entropy: ``logits[h]`` (B, k_h) against ``labels[:, h]`` (B,)."""
    if labels.dim() != 2 or labels.shape[1] != len(logits):
        raise ValueError(f"cluster_heads_loss: labels must be (B, {len(logits)}) (one column per head), "
                         f"got {tuple(labels.shape)}")
    losses = [F.cross_entropy(out.float(), labels[:, h]) for h, out in enumerate(logits)]
    return torch.stack(losses).mean()


@torch.no_grad()
def embed_dataset(encoder: Encoder, dataset: Any, device: torch.device,
                  batch_size: int = 256) -> torch.Tensor:
    """L2-normalized embeddings ``(N, D)`` (CPU, float32) of every image, encoder in eval mode."""
    was_training = encoder.training
    encoder.to(device).eval()
    try:
        out = [F.normalize(encoder.embed(b["image"].to(device)).float(), dim=1).cpu()
               for b in dataset.batches(batch_size)]
    finally:
        encoder.train(was_training)
    return torch.cat(out)


@METHODS.register("advcl")
class AdvCL(PretrainMethod):
    """AdvCL. Options:

    - attack: ``eps``, ``steps``, ``step_size`` (L-inf PGD on the weak view);
    - loss: ``temperature`` (0.5), ``ce_weight`` λ (0.2), ``hfc_radius`` (8 cycles per image, for 32 px);
    - pseudo-labels: ``cluster_ks`` (the paper's five k's), ``max_k_fraction`` (k capped at this share of the
      dataset; None: no cap, and a k above the dataset size is an error), ``kmeans_iters``, ``cache_dir``
      (None: :func:`default_cache_dir`);
    - feature encoder: ``feature_encoder`` = a checkpoint path (loaded with ``robustssl.encoders.load``), an
      ``Encoder``, or the name of a pretraining method (default ``"simclr"``) that ``setup`` trains for
      ``feature_steps`` steps (batch ``feature_batch_size``, SGD lr ``feature_lr``, the method's keyword
      ``feature_options``, e.g. ``{crop_scale: [0.3, 1.0]}``) on the training set, on
      the encoder's architecture (the clean BN branch is the one trained), cached under ``cache_dir``;
    - ``proj_hidden_dim``, ``proj_dim``; ``views`` (strong: a ``SimCLRViews`` or a preset name) and
      ``crop_scale`` (default AdvCL's (0.2, 1)); ``weak_padding`` (the weak view's crop padding, 4 px).
    """

    #: the batch-norm branch to use downstream: AdvCL's SLF code reads features through ``bn_name='pgd'``
    eval_bn_branch = "adv"

    def __init__(
        self,
        encoder: Encoder,
        *,
        eps: float = 8 / 255,
        steps: int = 5,
        step_size: float = 2 / 255,
        temperature: float = 0.5,
        ce_weight: float = 0.2,
        hfc_radius: float = 8.0,
        cluster_ks: Sequence[int] = PAPER_KS,
        max_k_fraction: float | None = 0.1,
        kmeans_iters: int = 100,
        cache_dir: str | os.PathLike | None = None,
        feature_encoder: str | os.PathLike | Encoder = "simclr",
        feature_steps: int = 200,
        feature_batch_size: int = 128,
        feature_lr: float = 0.5,
        feature_options: dict[str, Any] | None = None,
        proj_hidden_dim: int = 512,
        proj_dim: int = 128,
        views: SimCLRViews | str | None = None,
        crop_scale: tuple[float, float] | list[float] | None = None,
        weak_padding: int = 4,
    ):
        super().__init__(encoder)
        require_dual_bn(encoder, "advcl")
        self.threat = pgd_settings("advcl", eps, steps, step_size)
        self.steps, self.step_size = steps, float(step_size)
        if not temperature > 0:
            raise ValueError(f"advcl: temperature must be > 0, got {temperature}")
        if not ce_weight >= 0:
            raise ValueError(f"advcl: ce_weight (λ) must be >= 0 (the paper uses 0.2), got {ce_weight}")
        if not hfc_radius >= 0:
            raise ValueError(f"advcl: hfc_radius must be >= 0 (cycles per image), got {hfc_radius}")
        ks = list(cluster_ks)
        if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 2 for k in ks):
            raise ValueError(f"advcl: cluster_ks must be a non-empty list of ints >= 2, got {cluster_ks!r}")
        if max_k_fraction is not None and not 0 < max_k_fraction <= 1:
            raise ValueError(f"advcl: max_k_fraction must be in (0, 1] or None (no cap), "
                             f"got {max_k_fraction}")
        if kmeans_iters < 1:
            raise ValueError(f"advcl: kmeans_iters must be >= 1, got {kmeans_iters}")
        if feature_steps < 1 or feature_batch_size < 2 or not feature_lr > 0:
            raise ValueError("advcl: feature_steps must be >= 1, feature_batch_size >= 2 and feature_lr > 0, "
                             f"got {feature_steps}, {feature_batch_size}, {feature_lr}")
        if not isinstance(feature_encoder, (str, os.PathLike, Encoder)):
            raise TypeError("advcl: feature_encoder must be a checkpoint path, a pretraining-method name or "
                            f"an Encoder, got {type(feature_encoder).__name__}")
        self.temperature, self.ce_weight, self.hfc_radius = float(temperature), float(ce_weight), hfc_radius
        self.cluster_ks, self.max_k_fraction, self.kmeans_iters = ks, max_k_fraction, kmeans_iters
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.feature_source = feature_encoder
        self.feature_recipe = {"steps": feature_steps, "batch_size": feature_batch_size, "lr": feature_lr,
                               "options": dict(feature_options or {})}
        self.projector = projector(encoder.embed_dim, proj_hidden_dim, proj_dim)
        # One linear head per clustering on the embedding (AdvCL's fc_002 ... fc_500), sized for the requested
        # k; only the first k_eff outputs are used when setup caps k for a small dataset.
        self.cluster_heads = nn.ModuleList(nn.Linear(encoder.embed_dim, k) for k in ks)
        # AdvCL's CIFAR augmentations: RandomResizedCrop scale (0.2, 1) + SimCLR jitter; RandomCrop(32, pad 4)
        if views is None and crop_scale is None:
            crop_scale = ADVCL_CROP_SCALE
        self.views = resolve_views(views, crop_scale)
        self.weak_views = PadCropFlip(padding=weak_padding)
        self.effective_ks: list[int] = []
        self.cache_file: Path | None = None
        self.register_buffer("pseudo_labels", torch.empty(0, len(ks), dtype=torch.long), persistent=False)

    # --- pseudo-labels ------------------------------------------------------------------------------------
    def ks_for(self, n: int, where: str = "the dataset") -> list[int]:
        """The k's used for ``n`` samples: each capped at ``max(2, ⌊max_k_fraction · n⌋)``; an error if a k
        exceeds ``n``."""
        cap = None if self.max_k_fraction is None else max(2, int(self.max_k_fraction * n))
        ks = [k if cap is None else min(k, cap) for k in self.cluster_ks]
        too_big = [k for k in ks if k > n]
        if too_big:
            raise ValueError(
                f"advcl: cluster k={too_big[0]} is larger than {where} ({n} samples); pass smaller "
                f"cluster_ks or max_k_fraction (e.g. 0.1 caps every k at n/10), got "
                f"cluster_ks={self.cluster_ks}, max_k_fraction={self.max_k_fraction}"
            )
        return ks

    def feature_encoder(self, dataset: Any, device: torch.device, generator: torch.Generator) -> Encoder:
        """The encoder whose features are clustered: the given one, a checkpoint, or one pretrained with the
        named method (cached under ``cache_dir``; its seed drawn from ``generator``)."""
        source = self.feature_source
        if isinstance(source, Encoder):
            return source
        if isinstance(source, str) and source in METHODS and not Path(source).exists():
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            return standard_pretrained(self.encoder, source, dataset, device, seed=seed,
                                       cache_dir=self.cache_dir, who="advcl", **self.feature_recipe)
        path = Path(source).expanduser()
        if not path.exists() and not path.with_name(path.name + ".safetensors").exists():
            raise ValueError(
                f"advcl: feature_encoder {str(source)!r} is neither a checkpoint file nor a pretraining "
                f"method; accepted: a path loadable by robustssl.encoders.load, an Encoder, or one of "
                f"{', '.join(METHODS.names())}"
            )
        return load_encoder(path)

    def setup(self, dataset: Any, device: torch.device, generator: torch.Generator) -> None:
        """Pseudo-labels ``(N, len(cluster_ks))`` for ``dataset``: from the cache when its key matches, else
        feature encoder -> normalized embeddings -> one k-means per k (k-means++ from ``generator``)."""
        n = len(dataset)
        self.effective_ks = self.ks_for(n, f"dataset {getattr(dataset, 'name', '?')!r}")
        if self.effective_ks != self.cluster_ks:
            log.info("advcl: cluster k's %s capped to %s for %d samples", self.cluster_ks, self.effective_ks,
                     n)
        generator_sha = hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()
        encoder = self.feature_encoder(dataset, device, generator)
        key = {"format": CACHE_FORMAT, "feature_encoder_sha256": state_hash(encoder),
               "dataset": dataset_fingerprint(dataset), "ks": self.effective_ks,
               "kmeans_iters": self.kmeans_iters,
               "generator_sha256": generator_sha}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.cache_file = self.cache_dir / f"pseudo-labels-{digest[:24]}.safetensors"
        labels = self._read_cache(self.cache_file, n)
        if labels is None:
            labels = self._compute_labels(dataset, device, generator, encoder)
            self._write_cache(self.cache_file, labels, key)
        self.pseudo_labels = labels.to(device)

    def _compute_labels(self, dataset: Any, device: torch.device, generator: torch.Generator,
                        encoder: Encoder) -> torch.Tensor:
        seeds = split_generator(generator, len(self.effective_ks))
        features = embed_dataset(encoder, dataset, device).to(device)
        columns, done = [], {}
        for k, g in zip(self.effective_ks, seeds, strict=False):
            if k not in done:  # capped k's may coincide: one clustering each
                result = kmeans(features, k, g, max_iter=self.kmeans_iters)
                log.info("advcl: k-means k=%d: %d iterations, inertia %.4g", k, result.iterations,
                         result.inertia)
                done[k] = result.labels.cpu()
            columns.append(done[k])
        return torch.stack(columns, dim=1)

    @staticmethod
    def _read_cache(path: Path, n: int) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            labels = load_file(str(path))["labels"]
        except Exception as exc:  # a truncated or foreign file: recompute rather than fail
            log.warning("advcl: ignoring unreadable pseudo-label cache %s (%s)", path, exc)
            return None
        if labels.shape[0] != n:
            log.warning("advcl: ignoring pseudo-label cache %s: %d rows for %d samples", path, len(labels), n)
            return None
        log.info("advcl: pseudo-labels from cache %s", path)
        return labels.long()

    @staticmethod
    def _write_cache(path: Path, labels: torch.Tensor, key: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file({"labels": labels.contiguous()}, str(tmp),
                      metadata={"key": json.dumps(key, sort_keys=True)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    # --- training -----------------------------------------------------------------------------------------
    def cluster_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Each head's logits on embeddings ``h`` (B, D), cut to its effective k."""
        return [head(h)[:, :k] for head, k in zip(self.cluster_heads, self.effective_ks, strict=True)]

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.pseudo_labels.shape[0] == 0:
            raise RuntimeError("advcl: no pseudo-labels; call setup(dataset, device, generator) before "
                               "training (robustssl.pretrain.train does)")
        if "index" not in batch:
            raise KeyError("advcl: the batch needs 'index' (positions in the training set) to look up "
                           "pseudo-labels")
        labels = self.pseudo_labels[batch["index"].to(self.pseudo_labels.device)].to(batch["image"].device)
        images = batch["image"]
        x1, x2 = self.views(images, generator=generator), self.views(images, generator=generator)
        weak = self.weak_views(images, generator=generator)
        hfc = high_frequency_view(weak, self.hfc_radius)

        with eval_mode(self), torch.no_grad(), bn_branch(self.encoder, "clean"):
            anchors = [self.projector(self.encoder.embed(v)) for v in (x1, x2, hfc)]

        def attack_loss(x: torch.Tensor) -> torch.Tensor:
            with bn_branch(self.encoder, "adv"):
                h = self.encoder.embed(x)
            z = torch.stack([self.projector(h), *anchors], dim=1)
            return (multi_view_nt_xent(z, self.temperature)
                    + self.ce_weight * cluster_heads_loss(self.cluster_logits(h), labels))

        with eval_mode(self):
            x_adv = maximize(attack_loss, weak, threat=self.threat, steps=self.steps,
                             step_size=self.step_size, generator=generator)

        with bn_branch(self.encoder, "clean"):
            clean = [self.projector(self.encoder.embed(v)) for v in (x1, x2, hfc)]
        with bn_branch(self.encoder, "adv"):
            h_adv = self.encoder.embed(x_adv)
        contrast = multi_view_nt_xent(torch.stack([self.projector(h_adv), *clean], dim=1), self.temperature)
        ce = cluster_heads_loss(self.cluster_logits(h_adv), labels)
        logs = {"contrast": float(contrast.detach()), "cluster_ce": float(ce.detach())}
        return contrast + self.ce_weight * ce, logs

"""Masked and noisy image modelling: ``mae`` (He et al., CVPR 2022) and ``nim`` (You et al., NeurIPS 2023).

Both train the project's ViT (``vit_tiny`` / ``vit_small``) as the encoder of an encoder–decoder that predicts
the pixels of every patch of the **clean** image:

- ``mae``: a random ``mask_ratio`` (0.75) of the patches is dropped; the encoder runs on the visible
  patches only (``VisionTransformer.tokens(x, keep)``), a lightweight transformer decoder fills the rest with
  a learned mask token, and the MSE counts the masked patches only (``loss_on="all"``: every patch).
- ``nim`` ("Beyond pretrained features: noisy image modeling provides adversarial defense"): no masking; the
  encoder sees every patch of ``x + N(0, σ²)`` and the decoder reconstructs ``x``. ``σ`` is drawn per image
  from ``Gamma(shape 25, scale 3/255)`` (mean 75/255: the published 0–255 setting), or fixed, or uniform.

Targets are per-patch normalized pixels (``norm_pix_loss``, MAE's default): each ``p × p × 3`` patch minus its
mean over its ``3 p²`` values, divided by ``sqrt(var + 1e-6)`` (unbiased variance, as MAE). A prediction
becomes an image again with the mean and std of a *reference* image's patches (``to_image``); in De³
(``robustssl.defenses``) the reference is the input before noise is added, as in the published code.

``method.encoder`` is a plain ``Encoder`` for the rest of robustssl; the method itself (encoder + decoder) is
the denoiser of De³: ``purify(x, sigma=..., mask_ratio=..., generator=g)``, saved and loaded with
``save(path)`` / :func:`load_denoiser` (safetensors + JSON sidecar, never a pickle). Every random draw (σ,
noise, masks) comes from the ``generator`` passed in.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.encoders.checkpoints import (
    _write_atomic,
    load_state,
    save_state,
    sha256_file,
    sidecar_path,
    weights_path,
)
from robustssl.encoders.factory import create
from robustssl.encoders.vit import Block, VisionTransformer
from robustssl.pretrain.method import METHODS, PretrainMethod, build_method
from robustssl.runtime.validation import check_image

DENOISER_FORMAT = "robustssl.denoiser/1"
LOSS_ON = ("masked", "all")
#: the published NIM noise: sigma ~ Gamma(concentration 25, scale 3) in 0-255 units (You et al. 2023, Sec. 4)
GAMMA_SHAPE, GAMMA_SCALE = 25.0, 3.0 / 255
#: MAE's variance floor in the per-patch target normalization (He et al. 2022, official code)
NORM_EPS = 1e-6


# --- numbers from presets -----------------------------------------------------------------------------------
def _number(value: Any, what: str) -> float:
    """A float from a number or a fraction string such as ``"75/255"`` (presets write sigmas that way)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{what} must be a number or a fraction like '75/255', got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


# --- noise levels -------------------------------------------------------------------------------------------
def sample_gamma(shape: float, n: int, generator: torch.Generator, device: torch.device | str = "cpu",
                 ) -> torch.Tensor:
    """``n`` draws of Gamma(``shape``, scale 1) from ``generator`` (Marsaglia & Tsang, ACM TOMS 2000).

    ``torch.distributions.Gamma`` cannot take a generator, hence this sampler: squeeze-free rejection from a
    cubed normal (acceptance > 95 % for shape >= 1); shape < 1 uses Gamma(shape + 1) · U^(1/shape).
    """
    if not (isinstance(shape, (int, float)) and shape > 0 and math.isfinite(shape)):
        raise ValueError(f"gamma shape must be a finite number > 0, got {shape!r}")
    boost = shape < 1
    a = shape + 1.0 if boost else float(shape)
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        x = torch.randn(todo.numel(), generator=generator, device=device)
        u = torch.rand(todo.numel(), generator=generator, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        out = out * torch.rand(n, generator=generator, device=device) ** (1.0 / shape)
    return out


@dataclass(frozen=True)
class NoiseLevel:
    """How the noise std σ (image units: 1 = the whole [0, 1] range) is drawn per image.

    ``kind`` ``fixed`` (``params = (σ,)``), ``uniform`` (``(low, high)``) or ``gamma`` (``(shape, scale)``).
    """

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, sigma: Any, gamma_shape: Any = GAMMA_SHAPE, gamma_scale: Any = GAMMA_SCALE) -> NoiseLevel:
        """``"gamma"`` -> Gamma(gamma_shape, gamma_scale); a number -> fixed; ``[low, high]`` -> uniform.

        Numbers may be fraction strings (``"75/255"``); all must be >= 0.
        """
        if isinstance(sigma, str) and sigma.strip().lower() == "gamma":
            shape, scale = _number(gamma_shape, "gamma_shape"), _number(gamma_scale, "gamma_scale")
            if shape <= 0 or scale <= 0:
                raise ValueError(f"gamma_shape and gamma_scale must be > 0, got {shape} and {scale}")
            return cls("gamma", (shape, scale))
        if isinstance(sigma, (list, tuple)):
            if len(sigma) != 2:
                raise ValueError(f"a sigma range is [low, high], got {list(sigma)!r}")
            low, high = (_number(s, "sigma range") for s in sigma)
            if not 0 <= low <= high:
                raise ValueError(f"sigma range needs 0 <= low <= high, got [{low}, {high}]")
            return cls("uniform", (low, high))
        try:
            value = _number(sigma, "sigma")
        except ValueError:
            raise ValueError(f"sigma must be 'gamma', a number >= 0 or a range [low, high] (image units, "
                             f"e.g. '75/255'), got {sigma!r}") from None
        if value < 0:
            raise ValueError(f"sigma must be >= 0 (a noise standard deviation), got {value}")
        return cls("fixed", (value,))

    @property
    def mean(self) -> float:
        """E[σ]."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            return 0.5 * (self.params[0] + self.params[1])
        return self.params[0] * self.params[1]

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(n,)`` σ values from ``generator``."""
        if self.kind == "fixed":
            return torch.full((n,), self.params[0], device=device)
        if self.kind == "uniform":
            low, high = self.params
            return low + (high - low) * torch.rand(n, generator=generator, device=device)
        shape, scale = self.params
        return scale * sample_gamma(shape, n, generator, device)


def add_noise(x: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x + σ · N(0, 1)`` with σ a number or one value per image ``(B,)``; not clipped (noisy images leave
    [0, 1], as in the published NIM)."""
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    elif sigma == 0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# --- patches ------------------------------------------------------------------------------------------------
def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, N, p·p·C)``: patches in row-major order, each flattened as
    (row, col, channel) (MAE's layout)."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int],
               channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, gh·gw, p·p·C)`` -> ``(B, C, gh·p, gw·p)``."""
    b = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * p, gw * p)


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std ``sqrt(var + 1e-6)`` over the last dim (unbiased variance), both
    ``(B, N, 1)``."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + NORM_EPS).sqrt()
    return mean, std


def normalized_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MAE's ``norm_pix_loss`` target: every patch of ``x`` standardized by its own mean and std."""
    patches = patchify(x, patch_size)
    mean, std = patch_stats(patches)
    return (patches - mean) / std


def patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per patch ``(B, N)``, averaged over the patches where ``mask`` (``(B, N)`` bool,
    True = masked) holds, or over all patches when ``mask`` is None."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    if mask is None:
        return per_patch.mean()
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)


def psnr(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB for images in [0, 1]: ``10 log10(1 / MSE)``, ``(B,)``."""
    mse = (x - reference).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def random_keep(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: ``keep`` ``(B, K)`` indices of the visible patches, with
    ``K = int(N · (1 − mask_ratio))``, and ``mask`` ``(B, N)`` bool, True where a patch is dropped."""
    keep_n = int(num_patches * (1 - mask_ratio))
    if keep_n < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch of {num_patches}")
    order = torch.rand(batch, num_patches, generator=generator, device=device).argsort(dim=1)
    keep = order[:, :keep_n]
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``(1, 1 + gh·gw, dim)`` (first token, CLS, all zeros): half
    the channels encode the row, half the column, each as sin/cos at geometric frequencies (MAE's decoder)."""
    if dim % 4:
        raise ValueError(f"decoder_dim must be a multiple of 4 for 2-D sine-cosine embeddings, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angles = pos[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1).float()
    return torch.cat([torch.zeros(1, dim), table]).unsqueeze(0)


# --- the decoder --------------------------------------------------------------------------------------------
class PixelDecoder(nn.Module):
    """MAE's lightweight decoder: linear projection of the encoder tokens, a mask token for every dropped
    patch, fixed sine-cosine positions, ``depth`` pre-norm transformer blocks, and a linear layer to the
    ``p·p·C`` pixels of each patch. Returns ``(B, N, p·p·C)`` (CLS dropped).

    ``masking=False`` (nim) builds no mask token: every parameter then takes part in every loss, as
    DistributedDataParallel wants.
    """

    def __init__(self, encoder_dim: int, patch_size: int, grid: tuple[int, int], *, dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, channels: int = 3,
                 masking: bool = True):
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads or depth < 1:
            raise ValueError(f"decoder needs depth >= 1 and decoder_dim a positive multiple of "
                             f"decoder_heads, got decoder_dim={dim}, decoder_depth={depth}, "
                             f"decoder_heads={num_heads}")
        self.grid, self.num_patches = tuple(grid), grid[0] * grid[1]
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if masking else None
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid), persistent=False)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_size * patch_size * channels)
        # MAE's initialization: xavier-uniform linears, zero biases, N(0, 0.02) mask token.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: ``(B, 1 + K, encoder_dim)`` (CLS first, then the patches listed in ``keep``, or all N)."""
        x = self.embed(tokens)
        if keep is not None:
            if self.mask_token is None:
                raise ValueError("this decoder was built without a mask token (a nim model is trained "
                                 "without masking); test-time masking needs an mae model")
            b, _, d = x.shape
            canvas = self.mask_token.to(x.dtype).expand(b, self.num_patches, d)
            patches = canvas.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
            x = torch.cat([x[:, :1], patches], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed.to(x.dtype)))
        return self.pred(x[:, 1:])


# --- the methods --------------------------------------------------------------------------------------------
class MaskedImageModel(PretrainMethod):
    """ViT encoder + pixel decoder, reconstructing the clean image from a masked and/or noisy one.

    Subclasses (``mae``, ``nim``) fix the corruption; ``options`` records the constructor arguments so that
    :meth:`save` / :func:`load_denoiser` rebuild the same model.
    """

    method_name = "masked-image"

    def __init__(self, encoder: Encoder, *, mask_ratio: float, noise: NoiseLevel | None, norm_pix_loss: bool,
                 loss_on: str, decoder_dim: int, decoder_depth: int, decoder_heads: int,
                 options: dict[str, Any]):
        super().__init__(encoder)
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(
                f"{self.method_name} needs robustssl's own ViT (encoders 'vit_tiny' or 'vit_small', e.g. "
                f"create('vit_tiny', img_size=32, patch_size=4, depth=4)), whose tokens(x, keep) runs a "
                f"subset of patches; got {getattr(encoder, 'name', type(encoder).__name__)!r} "
                f"({type(encoder).__name__})")
        mask_ratio = _number(mask_ratio, "mask_ratio")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
        self.mask_ratio, self.noise = mask_ratio, noise
        self.norm_pix_loss, self.loss_on = bool(norm_pix_loss), loss_on
        self.options = dict(options)
        self.decoder = PixelDecoder(encoder.embed_dim, encoder.patch_size, encoder.grid,
                                    dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads,
                                    channels=encoder.in_channels, masking=mask_ratio > 0)

    # --- geometry -------------------------------------------------------------------------------------------
    @property
    def img_size(self) -> int:
        """The image side the denoiser reconstructs (the encoder's ``img_size``)."""
        return int(self.encoder.img_size)

    @property
    def patch_size(self) -> int:
        return int(self.encoder.patch_size)

    @property
    def in_channels(self) -> int:
        return int(self.encoder.in_channels)

    def check_input(self, x: torch.Tensor, where: str) -> None:
        """``x`` must be ``(B, C, img_size, img_size)`` in [0, 1] with the denoiser's channels."""
        check_image(x, where, self.in_channels, force=True)
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"{where}: the {self.method_name} denoiser reconstructs {self.img_size}x"
                             f"{self.img_size} images, got {x.shape[-2]}x{x.shape[-1]}; resize the input or "
                             "pretrain a denoiser at this size")

    # --- building blocks ------------------------------------------------------------------------------------
    def predict(self, x_in: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output ``(B, N, p·p·C)`` for the (noisy) input ``x_in``, running only ``keep`` patches.

        ``x_in`` may leave [0, 1] (noise), so the encoder's image check is bypassed on purpose.
        """
        tokens = self.encoder._tokens(self.encoder.normalize(x_in), keep)
        return self.decoder(tokens, keep)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The regression target for clean ``x``: (normalized) patches ``(B, N, p·p·C)``."""
        return normalized_patches(x, self.patch_size) if self.norm_pix_loss else patchify(x, self.patch_size)

    def to_image(self, pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image ``(B, C, H, W)`` (not clamped). With ``norm_pix_loss`` each predicted patch
        is de-standardized with the mean and std of the same patch of ``reference``."""
        if self.norm_pix_loss:
            mean, std = patch_stats(patchify(reference, self.patch_size))
            pred = pred * std + mean
        return unpatchify(pred, self.patch_size, self.encoder.grid, self.in_channels)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator, *,
                sigma: float | torch.Tensor | None = None, mask_ratio: float | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(x_in, keep, mask)``: ``x`` plus noise (σ drawn from the method's ``noise`` unless given) and the
        masking (the method's ``mask_ratio`` unless given; ``keep``/``mask`` None without masking)."""
        if sigma is None:
            sigma = self.noise.sample(x.shape[0], generator, x.device) if self.noise is not None else 0.0
        x_in = add_noise(x, sigma, generator)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if ratio == 0:
            return x_in, None, None
        keep, mask = random_keep(x.shape[0], self.decoder.num_patches, ratio, generator, x.device)
        return x_in, keep, mask

    # --- pretraining ----------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, torch.Tensor],
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        self.check_input(x, f"{self.method_name}.training_loss")
        x_in, keep, mask = self.corrupt(x, generator)
        pred = self.predict(x_in, keep)
        loss = patch_loss(pred, self.target(x), mask if self.loss_on == "masked" else None)
        with torch.no_grad():
            recon = self.to_image(pred.detach().float(), x).clamp(0, 1)
            logs = {"mse": float(loss.detach()), "psnr": float(psnr(recon, x).mean())}
        return loss, logs

    # --- the denoiser ---------------------------------------------------------------------------------------
    def purify(self, x: torch.Tensor, *, sigma: float | torch.Tensor = 0.0, mask_ratio: float = 0.0,
               generator: torch.Generator, straight_through: bool = False) -> torch.Tensor:
        """Reconstruct ``x`` ``(B, C, img_size, img_size)`` in [0, 1] from ``x + N(0, σ²)`` with a random
        ``mask_ratio`` of its patches dropped; returns the reconstruction clamped to [0, 1].

        ``sigma``: a number or ``(B,)`` per image, >= 0. Per-patch statistics for ``norm_pix_loss`` come from
        ``x`` itself (before noise), as in the published De³. Differentiable w.r.t. ``x``; the clamp's
        gradient is zero where it saturates, or the identity with ``straight_through=True`` (BPDA, Athalye et
        al. 2018: same outputs, gradients that pass the clamp, for attacks).
        """
        self.check_input(x, f"{self.method_name}.purify")
        if isinstance(sigma, torch.Tensor):
            if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()):
                raise ValueError("sigma must be finite and >= 0 for every image")
        elif not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio!r}")
        x_in, keep, _ = self.corrupt(x, generator, sigma=sigma, mask_ratio=mask_ratio)
        image = self.to_image(self.predict(x_in, keep), x)
        if straight_through:
            return image + (image.clamp(0, 1) - image).detach()
        return image.clamp(0, 1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the whole model (encoder + decoder) to ``<path>.safetensors`` and its ``.json`` sidecar
        (method, options, encoder name and config, sha256 of the weights). Returns the weights path."""
        weights = weights_path(path)
        save_state(weights, {"model": self.state_dict()})
        meta = {
            "format": DENOISER_FORMAT,
            "method": self.method_name,
            "options": self.options,
            "encoder": self.encoder.name,
            "encoder_config": self.encoder.config,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "sha256": sha256_file(weights),
        }
        text = json.dumps(meta, indent=2, sort_keys=True)
        _write_atomic(sidecar_path(weights), lambda tmp: tmp.write_text(text))
        return weights


def _from_run(run: Path) -> MaskedImageModel:
    """A nim/mae model from a pretraining run folder: its ``preset.json`` (method, options, encoder) and the
    method's weights in ``train_state.safetensors``."""
    record, state_file = run / "preset.json", run / "train_state.safetensors"
    if not (record.is_file() and state_file.is_file()):
        raise FileNotFoundError(f"{run} holds neither denoiser.safetensors nor a pretraining run "
                                "(preset.json + train_state.safetensors); pass a file written by "
                                "MaskedImageModel.save or the --out folder of `robustssl pretrain` with "
                                "method nim or mae")
    try:
        preset = json.loads(record.read_text())["preset"]
        name, options = preset["method"], preset.get("method_options") or {}
        encoder = create(preset["encoder"], **(preset.get("encoder_options") or {}))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{record} does not describe a pretraining run ({exc!r})") from exc
    method = build_method(name, encoder, **options)
    if not isinstance(method, MaskedImageModel):
        raise ValueError(f"{run} is a {name!r} run; a denoiser comes from a 'nim' or 'mae' run")
    state = load_state(state_file)
    if "method" not in state:
        raise ValueError(f"{state_file} holds no method weights (keys: {sorted(state)})")
    method.load_state_dict(state["method"], strict=True)
    return method


def load_denoiser(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MaskedImageModel:
    """Rebuild a model written by :meth:`MaskedImageModel.save` (``x``, ``x.safetensors`` or ``x.json``),
    check the weights' sha256 against the sidecar, load the weights strictly; returned in eval mode.

    A folder is a pretraining run: its ``denoiser.safetensors`` if present, else the model rebuilt from the
    run's ``preset.json`` and ``train_state.safetensors`` (the ``--out`` of ``robustssl pretrain``).
    """
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not (folder / "denoiser.safetensors").is_file():
            return _from_run(folder).to(map_location).eval()
        path = folder / "denoiser.safetensors"
    weights = weights_path(Path(path).expanduser().with_suffix("") if str(path).endswith(".json") else path)
    sidecar = sidecar_path(weights)
    for file in (weights, sidecar):
        if not file.is_file():
            raise FileNotFoundError(f"denoiser file {file} not found (a denoiser is saved as .safetensors "
                                    "+ .json by MaskedImageModel.save)")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{sidecar} is not valid JSON: {exc}") from exc
    if meta.get("format") != DENOISER_FORMAT:
        raise ValueError(f"{sidecar} is not a denoiser sidecar (format {meta.get('format')!r}, expected "
                         f"{DENOISER_FORMAT!r}); encoder checkpoints are read with robustssl.encoders.load")
    if meta.get("sha256") != sha256_file(weights):
        raise ValueError(f"sha256 mismatch for {weights}: the weights were modified or truncated after "
                         "saving")
    encoder = create(meta["encoder"], **(meta.get("encoder_config") or {}))
    method = build_method(meta["method"], encoder, **(meta.get("options") or {}))
    if not isinstance(method, MaskedImageModel):
        raise ValueError(f"{sidecar}: method {meta['method']!r} is not a masked/noisy image model")
    method.load_state_dict(load_state(weights)["model"], strict=True)
    return method.to(map_location).eval()


@METHODS.register("mae")
class MAE(MaskedImageModel):
    """Masked autoencoder (He et al., CVPR 2022): drop ``mask_ratio`` of the patches, reconstruct them."""

    method_name = "mae"

    def __init__(self, encoder: Encoder, *, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 loss_on: str = "masked", decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16):
        options = {"mask_ratio": mask_ratio, "norm_pix_loss": norm_pix_loss, "loss_on": loss_on,
                   "decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}
        if _number(mask_ratio, "mask_ratio") <= 0:
            raise ValueError(f"mae needs mask_ratio in (0, 1), got {mask_ratio}; without masking use 'nim'")
        super().__init__(encoder, mask_ratio=mask_ratio, noise=None, norm_pix_loss=norm_pix_loss,
                         loss_on=loss_on, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                         decoder_heads=decoder_heads, options=options)


@METHODS.register("nim")
class NIM(MaskedImageModel):
    """Noisy image modelling (You et al., NeurIPS 2023): reconstruct the clean image from ``x + N(0, σ²)``,
    every patch visible. ``sigma``: ``"gamma"`` (Gamma(``gamma_shape``, ``gamma_scale``), default the
    published Gamma(25, 3/255)), a fixed number, or a range ``[low, high]`` drawn uniformly; image units
    (fractions such as ``"75/255"`` accepted)."""

    method_name = "nim"

    def __init__(self, encoder: Encoder, *, sigma: str | float | Sequence[float] = "gamma",
                 gamma_shape: float = GAMMA_SHAPE, gamma_scale: float | str = GAMMA_SCALE,
                 norm_pix_loss: bool = True, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16):
        noise = NoiseLevel.parse(sigma, gamma_shape, gamma_scale)
        options = {"sigma": list(sigma) if isinstance(sigma, (list, tuple)) else sigma,
                   "gamma_shape": gamma_shape, "gamma_scale": gamma_scale, "norm_pix_loss": norm_pix_loss,
                   "decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}
        super().__init__(encoder, mask_ratio=0.0, noise=noise, norm_pix_loss=norm_pix_loss, loss_on="all",
                         decoder_dim=decoder_dim, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                         options=options)

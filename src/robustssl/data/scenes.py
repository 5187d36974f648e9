"""``scenes``: synthetic multi-task scenes (classification, segmentation, metric depth) generated from a seed.

Each image shows 1-4 textured shapes standing on a textured ground plane seen by a pinhole camera 1 m above
the ground (focal length = image height). A ground pixel at normalized row ``y`` below the horizon ``y_h`` is
``Z = 1 / (y - y_h)`` metres away, so depth grows toward the horizon; an object at depth ``d`` stands on the
ground row ``y_h + 1 / d`` and its apparent radius is ``R / d`` for a physical radius ``R``. Objects are
fronto-parallel cut-outs: every pixel of an object has the object's depth, and nearer objects are painted over
farther ones, so the depth map and the occlusions agree.

Targets
    ``label``: class (0..K-1) of the object with the most *visible* pixels (ties: nearest wins).
    ``mask``: per-pixel class, 0 = ground or sky, ``k + 1`` for an object of class ``k``.
    ``depth``: metres; 0 (invalid, the contract's convention) for the sky and for ground beyond ``MAX_DEPTH``.

Geometry and appearance come from two separately seeded generators, so the distribution-shift variant
(``shift=True`` / ``scenes-shift``: unseen object textures, palettes and lighting) has exactly the same
labels, masks and depths as the in-distribution scene with the same seed and index.

Images are produced in chunks of :data:`CHUNK` whose generators are seeded from ``(seed, split, chunk)``, so
image ``i`` of a split does not depend on how many images were asked for.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from robustssl.data.base import DATASETS, TensorDataset
from robustssl.data.colour import hsv_to_rgb

CHUNK = 256
MIN_SIZE, MAX_SIZE = 32, 224
MAX_OBJECTS_LIMIT = 4
#: ground farther than this is reported as invalid depth (0), like a range-limited depth sensor
MAX_DEPTH = 12.0
#: nearest ground row (bottom of the image, highest horizon) is 1 / (1 - 0.40) ~ 1.67 m away
MIN_DEPTH = 1.0
DEFAULT_SIZES = {"train": 5000, "val": 1000, "test": 1000}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Pixel budget of one rendering pass (B * N * H * W); bounds the temporaries at large image sizes.
_PIXELS_PER_PASS = 1_000_000


@dataclass(frozen=True)
class Shape:
    """A shape as a signed-distance function in units of its radius.

    The outline is a regular star polygon with ``points`` tips at radius 1 and notches at radius ``inner``
    (``inner = cos(pi / points)`` gives a regular polygon; many points make a circle). ``hole`` > 0 cuts a
    concentric hole (ring); ``cut`` > 0 removes a disc of that radius centred ``cut_offset`` to the right
    (crescent); ``cross`` replaces the outline with a plus sign of arm half-width ``arm``. ``scale`` evens out
    the areas of the different classes.
    """

    points: int = 64
    inner: float = math.cos(math.pi / 64)
    hole: float = -1.0
    cut: float = -1.0
    cut_offset: float = 0.0
    cross: bool = False
    arm: float = 0.3
    scale: float = 1.0


SHAPES: dict[str, Shape] = {
    "circle": Shape(scale=0.85),
    "square": Shape(points=4, inner=math.cos(math.pi / 4), scale=0.95),
    "triangle": Shape(points=3, inner=0.5, scale=1.1),
    "star": Shape(points=5, inner=0.42, scale=1.1),
    "ring": Shape(hole=0.55, scale=0.95),
    "cross": Shape(cross=True, arm=0.3, scale=0.95),
    "crescent": Shape(cut=0.85, cut_offset=0.5, scale=1.0),
    "hexagon": Shape(points=6, inner=math.cos(math.pi / 6), scale=0.9),
}
#: six shapes that stay distinguishable at 32x32 (hexagon vs circle does not, so it is opt-in)
DEFAULT_CLASSES = ("circle", "square", "triangle", "star", "ring", "cross")


def _seed(*parts: object) -> int:
    """A 62-bit seed from a key; sha256 so different keys never collide in practice."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 2


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _palette(gen: torch.Generator, shape: tuple[int, ...], hue: tuple[float, float], sat: tuple[float, float],
             val: tuple[float, float]) -> torch.Tensor:
    """Random colours ``shape + (3,)`` drawn in HSV boxes (hue ranges may wrap past 1)."""
    h, s, v = _uniform(gen, shape, *hue) % 1.0, _uniform(gen, shape, *sat), _uniform(gen, shape, *val)
    hsv = torch.stack([h, s, v], -1)
    return hsv_to_rgb(hsv, dim=-1)


def _draw_geometry(gen: torch.Generator, batch: int, num_classes: int, min_objects: int,
                   max_objects: int) -> dict[str, torch.Tensor]:
    n = MAX_OBJECTS_LIMIT
    count = torch.randint(min_objects, max_objects + 1, (batch,), generator=gen)
    return {
        "horizon": _uniform(gen, (batch,), 0.25, 0.40),
        "active": torch.arange(n).expand(batch, n) < count[:, None],
        "cls": torch.randint(0, num_classes, (batch, n), generator=gen),
        "depth": _uniform(gen, (batch, n), 1.6, 4.0),
        "radius_m": _uniform(gen, (batch, n), 0.45, 0.70),
        "cx": _uniform(gen, (batch, n), 0.12, 0.88),
        "angle": _uniform(gen, (batch, n), 0.0, 2 * math.pi),
    }


def _draw_appearance(gen: torch.Generator, batch: int, shift: bool) -> dict[str, torch.Tensor]:
    n = MAX_OBJECTS_LIMIT
    if shift:
        # Unseen palettes: muted / dark object colours, cold ground, dusk sky; tinted low light.
        obj = dict(hue=(0.0, 1.0), sat=(0.08, 0.40), val=(0.25, 0.60))
        ground = dict(hue=(0.55, 0.85), sat=(0.15, 0.45), val=(0.15, 0.45))
        sky_top = dict(hue=(0.70, 0.95), sat=(0.3, 0.6), val=(0.2, 0.4))
        sky_bottom = dict(hue=(0.0, 0.12), sat=(0.4, 0.8), val=(0.6, 0.9))
        gain, shading, tint_sat = (0.55, 0.85), (0.5, 0.8), (0.15, 0.35)
    else:
        obj = dict(hue=(0.0, 1.0), sat=(0.55, 1.0), val=(0.55, 1.0))
        ground = dict(hue=(0.05, 0.35), sat=(0.10, 0.40), val=(0.30, 0.60))
        sky_top = dict(hue=(0.55, 0.65), sat=(0.4, 0.8), val=(0.6, 0.9))
        sky_bottom = dict(hue=(0.50, 0.62), sat=(0.05, 0.3), val=(0.8, 1.0))
        gain, shading, tint_sat = (0.85, 1.1), (0.0, 0.45), (0.0, 0.0)
    return {
        "obj_colours": _palette(gen, (batch, n, 2), obj["hue"], obj["sat"], obj["val"]),
        # 3 pattern kinds each: in-distribution flat / stripes / checker, shifted dots / rings / plaid
        "obj_pattern": torch.randint(0, 3, (batch, n), generator=gen),
        "obj_freq": _uniform(gen, (batch, n), 1.2, 2.5),
        "obj_orient": _uniform(gen, (batch, n), 0.0, math.pi),
        "obj_phase": _uniform(gen, (batch, n), 0.0, 2 * math.pi),
        "ground_colours": _palette(gen, (batch, 2), ground["hue"], ground["sat"], ground["val"]),
        "ground_period": _uniform(gen, (batch,), 0.3, 0.8),
        "ground_pattern": torch.randint(0, 2, (batch,), generator=gen),
        "sky": torch.stack([_palette(gen, (batch,), **sky_top), _palette(gen, (batch,), **sky_bottom)], 1),
        "gain": _uniform(gen, (batch,), *gain),
        "shading": _uniform(gen, (batch, n), *shading),
        "light": _uniform(gen, (batch,), 0.0, 2 * math.pi),
        "tint": _palette(gen, (batch,), (0.0, 1.0), tint_sat, (1.0, 1.0)),
    }


def shape_sdf(shape: Shape, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (radius units, < 0 inside) of ``shape`` at local coordinates ``u``, ``v`` (any shape).

    Star polygons measure distance along the ray from the centre, exact enough for 1-pixel anti-aliasing;
    circles, rings and crescents skip the angle computation entirely.
    """
    if shape.cross:
        au, av = u.abs(), v.abs()
        return torch.minimum(torch.maximum(au - 1.0, av - shape.arm), torch.maximum(au - shape.arm, av - 1.0))
    rho = torch.sqrt(u * u + v * v)
    if shape.points >= 32:
        sdf = rho - 1.0
    else:
        sector = 2 * math.pi / shape.points
        phi = torch.atan2(v, u) % sector
        phi = torch.minimum(phi, sector - phi)
        # Edge from the tip (1, 0) to the notch at angle sector/2: where the ray at angle phi meets it.
        dx = shape.inner * math.cos(sector / 2) - 1.0
        dy = shape.inner * math.sin(sector / 2)
        sdf = rho - dy / (dy * torch.cos(phi) - dx * torch.sin(phi))
    if shape.hole > 0:
        sdf = torch.maximum(sdf, shape.hole - rho)
    if shape.cut > 0:
        sdf = torch.maximum(sdf, shape.cut - torch.sqrt((u - shape.cut_offset) ** 2 + v * v))
    return sdf


def _pattern(kind: int, shift: bool, u: torch.Tensor, v: torch.Tensor, p: dict[str, torch.Tensor]
             ) -> torch.Tensor:
    """Texture value in [0, 1] mixing an object's two colours; ``p`` holds ``(M, 1, 1)`` parameters."""
    w = 2 * math.pi * p["obj_freq"]
    cos, sin = torch.cos(p["obj_orient"]), torch.sin(p["obj_orient"])
    along, across = u * cos + v * sin, v * cos - u * sin
    if shift:
        if kind == 0:  # dots
            return ((torch.sin(w * along + p["obj_phase"]) * torch.sin(w * across)).abs() > 0.6).float()
        if kind == 1:  # concentric rings
            return 0.5 + 0.5 * torch.sin(w * torch.sqrt(u * u + v * v) + p["obj_phase"])
        return 0.5 + 0.25 * (torch.sin(w * along) + torch.sin(2.3 * w * across + p["obj_phase"]))  # plaid
    if kind == 0:  # flat
        return torch.zeros_like(u)
    wave = torch.sin(w * along + p["obj_phase"])
    if kind == 1:  # stripes
        return torch.clamp(0.5 + 1.5 * wave, 0.0, 1.0)
    return torch.clamp(0.5 + 3.0 * wave * torch.sin(w * across), 0.0, 1.0)  # checker


def _by_group(groups: torch.Tensor, values: list[int], out: torch.Tensor, fn) -> torch.Tensor:
    """``out[i] = fn(value, idx)`` for the rows ``idx`` whose group is ``value``: each function only sees its
    own objects, so expensive shapes and textures are computed where they are used."""
    for value in values:
        idx = torch.nonzero(groups == value).flatten()
        if len(idx):
            out[idx] = fn(value, idx)
    return out


def _background(g: dict[str, torch.Tensor], a: dict[str, torch.Tensor], ys: torch.Tensor, xs: torch.Tensor,
                shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sky + perspective ground: colour ``(B, 3, H, W)`` and depth ``(B, H, 1)`` (0 where invalid)."""
    horizon = g["horizon"][:, None, None]
    below = ys > horizon + 1e-6
    z = 1.0 / torch.where(below, ys - horizon, torch.ones_like(ys - horizon))
    world_x = (xs - 0.5) * z
    period = a["ground_period"][:, None, None]
    if shift:
        # Unseen ground textures: diagonal planks and circles around a point ahead.
        planks = torch.sin(math.pi * (world_x + z) / period)
        circles = torch.sin(math.pi * torch.sqrt(world_x ** 2 + (z - 4.0) ** 2) / period)
        wave = torch.where(a["ground_pattern"][:, None, None] == 0, planks, circles)
    else:
        stripes = torch.sin(math.pi * z / period)
        checker = torch.sin(math.pi * world_x / period) * stripes
        wave = torch.where(a["ground_pattern"][:, None, None] == 0, checker, stripes)
    t = torch.clamp(0.5 + 2.0 * wave, 0.0, 1.0).unsqueeze(1)
    c0, c1 = (a["ground_colours"][:, i, :, None, None] for i in (0, 1))
    # Aerial perspective: far ground fades to the horizon colour, which also hides checker aliasing.
    haze = (1.0 - torch.exp(-z / 6.0)).unsqueeze(1)
    sky_top, sky_bottom = a["sky"][:, 0, :, None, None], a["sky"][:, 1, :, None, None]
    ground = c0 + (c1 - c0) * t
    ground = ground + (sky_bottom - ground) * haze
    sky = sky_top + (sky_bottom - sky_top) * torch.clamp(ys / horizon, 0.0, 1.0).unsqueeze(1)
    colour = torch.where(below.unsqueeze(1), ground, sky)
    depth = torch.where(below & (z <= MAX_DEPTH), z, torch.zeros_like(z))
    return colour, depth


_SLOT_APPEARANCE = ("obj_colours", "obj_pattern", "obj_freq", "obj_orient", "obj_phase", "shading")


def render(geometry: dict[str, torch.Tensor], appearance: dict[str, torch.Tensor], size: int,
           classes: tuple[str, ...], shift: bool = False, layers: bool = False) -> dict[str, torch.Tensor]:
    """Rasterize a batch of scenes from drawn parameters.

    Returns ``image`` ``(B, 3, size, size)`` in [0, 1], ``mask`` ``(B, size, size)`` int64, ``depth``
    ``(B, size, size)`` float32 metres, ``label`` ``(B,)`` int64. With ``layers`` also ``coverage``
    ``(B, N, size, size)`` bool (each object's full silhouette, occluded or not), ``object_depth``,
    ``object_class`` and ``active`` ``(B, N)`` - the ground truth the targets are derived from (objects in
    painting order, farthest first).
    """
    batch, n = geometry["cls"].shape
    ys = ((torch.arange(size, dtype=torch.float32) + 0.5) / size).view(1, size, 1)
    xs = ((torch.arange(size, dtype=torch.float32) + 0.5) / size).view(1, 1, size)
    image, ground_depth = _background(geometry, appearance, ys, xs, shift)

    # Painter's order: farthest first; inactive slots sort before all and paint nothing.
    key = torch.where(geometry["active"], geometry["depth"], torch.full_like(geometry["depth"], math.inf))
    order = torch.argsort(key, dim=1, descending=True)
    g = {k: torch.gather(geometry[k], 1, order)
         for k in ("cls", "depth", "radius_m", "cx", "angle", "active")}
    a = {k: appearance[k][torch.arange(batch)[:, None], order] for k in _SLOT_APPEARANCE}

    # Only active objects are rasterized, packed as M rows (image-major, then painting order).
    img_of, slot_of = torch.nonzero(g["active"], as_tuple=True)
    cls = g["cls"][img_of, slot_of]
    scale = torch.tensor([SHAPES[c].scale for c in classes])[cls]
    col = lambda t: t[:, None, None]  # noqa: E731  (M,) -> (M, 1, 1) for broadcasting over pixels
    radius = g["radius_m"][img_of, slot_of] / g["depth"][img_of, slot_of] * scale
    # The object's lowest point rests on the ground row at its depth.
    cy = geometry["horizon"][img_of] + 1.0 / g["depth"][img_of, slot_of] - radius
    dx = (xs - col(g["cx"][img_of, slot_of])) / col(radius)
    dy = (ys - col(cy)) / col(radius)
    angle = g["angle"][img_of, slot_of]
    cos, sin = col(torch.cos(angle)), col(torch.sin(angle))
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    shapes = [SHAPES[c] for c in classes]
    sdf = _by_group(cls, list(range(len(classes))), torch.empty_like(u),
                    lambda c, idx: shape_sdf(shapes[c], u[idx], v[idx]))
    coverage = sdf < 0
    alpha = torch.clamp(0.5 - sdf * col(radius * size), 0.0, 1.0).unsqueeze(1)

    p = {k: col(a[k][img_of, slot_of]) for k in ("obj_freq", "obj_orient", "obj_phase")}
    t = _by_group(a["obj_pattern"][img_of, slot_of], [0, 1, 2], torch.empty_like(u),
                  lambda kind, idx: _pattern(kind, shift, u[idx], v[idx], {k: w[idx] for k, w in p.items()}))
    light = appearance["light"][img_of]
    # Directional shading across the object as if it were curved: brighter on the lit side.
    lit = (u * col(torch.cos(light)) + v * col(torch.sin(light))).clamp_(-1, 1)
    shade = 1.0 - 0.5 * col(a["shading"][img_of, slot_of]) * lit
    c0 = a["obj_colours"][img_of, slot_of, 0][..., None, None]
    c1 = a["obj_colours"][img_of, slot_of, 1][..., None, None]

    # Composite in the full (image, slot) layout: empty slots have alpha 0 and change nothing.
    alpha_full = torch.zeros(batch, n, 1, size, size)
    alpha_full[img_of, slot_of] = alpha
    premult = torch.zeros(batch, n, 3, size, size)
    premult[img_of, slot_of] = torch.addcmul(c0, c1 - c0, t.unsqueeze(1)) * (shade.unsqueeze(1) * alpha)
    for k in range(n):
        image = torch.addcmul(premult[:, k], image, 1.0 - alpha_full[:, k])
    # The visible object is the last (nearest) slot covering the pixel.
    ranks = torch.zeros(batch, n, size, size, dtype=torch.uint8)
    ranks[img_of, slot_of] = coverage.to(torch.uint8) * (slot_of.to(torch.uint8) + 1)[:, None, None]
    owner = ranks.amax(1).long() - 1

    image = image * (appearance["gain"][:, None, None, None] * appearance["tint"][:, :, None, None])
    if shift:
        image = image * (1.0 - 0.9 * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2)).unsqueeze(1)
    image = image.clamp_(0.0, 1.0)

    visible = owner >= 0
    slot_idx = owner.clamp(min=0).flatten(1)
    depth = torch.where(visible, torch.gather(g["depth"], 1, slot_idx).view_as(owner),
                        ground_depth.expand(batch, size, size))
    owner_cls = torch.gather(g["cls"], 1, slot_idx).view_as(owner)
    mask = torch.where(visible, owner_cls + 1, torch.zeros_like(owner))
    # Visible pixels per (image, slot) in one bincount; bin 0 of each image collects the background.
    bins = (owner + 1 + (n + 1) * torch.arange(batch)[:, None, None]).flatten()
    counts = torch.bincount(bins, minlength=batch * (n + 1)).view(batch, n + 1)[:, 1:].float()
    # Ties go to the nearer object: subtract a depth term smaller than one pixel.
    best = torch.argmax(counts - g["depth"] / (10 * (MAX_DEPTH + 1)), dim=1)
    out = {"image": image, "mask": mask, "depth": depth.float(), "label": g["cls"][torch.arange(batch), best]}
    if layers:
        full = torch.zeros(batch, n, size, size, dtype=torch.bool)
        full[img_of, slot_of] = coverage
        out.update(coverage=full, object_depth=g["depth"], object_class=g["cls"], active=g["active"])
    return out


def _check(size: int, classes: tuple[str, ...], min_objects: int, max_objects: int) -> None:
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"scenes: size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"scenes: unknown shape classes {unknown}; accepted: {', '.join(SHAPES)}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"scenes: classes must be >= 2 distinct shape names, got {list(classes)}")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS_LIMIT:
        raise ValueError(f"scenes: need 1 <= min_objects <= max_objects <= {MAX_OBJECTS_LIMIT}, "
                         f"got min_objects={min_objects}, max_objects={max_objects}")


def generate(n: int, *, size: int = 32, seed: int = 0, split: str = "test", shift: bool = False,
             classes: tuple[str, ...] = DEFAULT_CLASSES, min_objects: int = 1, max_objects: int = 4,
             start: int = 0, layers: bool = False) -> dict[str, torch.Tensor]:
    """Images ``start .. start + n - 1`` of a scenes split, as float batches (see :func:`render`).

    Deterministic: the same arguments give bit-identical tensors; chunk ``c`` (images ``c*CHUNK ..``) is
    drawn from generators seeded with ``(seed, split, c)``, geometry and appearance separately.
    """
    classes = tuple(classes)
    _check(size, classes, min_objects, max_objects)
    if split not in SPLIT_IDS:
        raise ValueError(f"scenes: unknown split {split!r}; accepted: {', '.join(SPLIT_IDS)}")
    if n < 0 or start < 0:
        raise ValueError(f"scenes: n and start must be >= 0, got n={n}, start={start}")
    parts: list[dict[str, torch.Tensor]] = []
    first, last = start // CHUNK, (start + n - 1) // CHUNK
    per_pass = max(1, _PIXELS_PER_PASS // (MAX_OBJECTS_LIMIT * size * size))
    for chunk in range(first, last + 1) if n else ():
        geo_gen = torch.Generator().manual_seed(_seed("scenes-geometry", seed, split, chunk))
        app_gen = torch.Generator().manual_seed(_seed("scenes-appearance", seed, split, shift, chunk))
        geo = _draw_geometry(geo_gen, CHUNK, len(classes), min_objects, max_objects)
        app = _draw_appearance(app_gen, CHUNK, shift)
        lo = max(start - chunk * CHUNK, 0)
        hi = min(start + n - chunk * CHUNK, CHUNK)
        for s in range(lo, hi, per_pass):
            e = min(s + per_pass, hi)
            geo_part = {k: v[s:e] for k, v in geo.items()}
            app_part = {k: v[s:e] for k, v in app.items()}
            parts.append(render(geo_part, app_part, size, classes, shift, layers))
    if not parts:
        empty = torch.Generator()
        return render(_draw_geometry(empty, 0, len(classes), 1, 1), _draw_appearance(empty, 0, shift), size,
                      classes, shift, layers)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class ScenesDataset(TensorDataset):
    """In-memory scenes split: images kept as uint8 and masks as uint8 (4x smaller), converted on access."""

    def __init__(self, *, split: str = "test", n: int | None = None, size: int = 32, seed: int = 0,
                 shift: bool = False, classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES,
                 min_objects: int = 1, max_objects: int = 4):
        classes = tuple(classes)
        count = DEFAULT_SIZES.get(split, 0) if n is None else n
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"scenes: n must be a positive int, got {n!r}")
        images, masks, depths, labels = [], [], [], []
        # Generate a few chunks at a time so the float temporaries never hold the whole split.
        step = CHUNK * 4
        for start in range(0, count, step):
            out = generate(min(step, count - start), size=size, seed=seed, split=split, shift=shift,
                           classes=classes, min_objects=min_objects, max_objects=max_objects, start=start)
            images.append(out["image"].mul(255).round_().to(torch.uint8))
            masks.append(out["mask"].to(torch.uint8))
            depths.append(out["depth"])
            labels.append(out["label"])
        name = "scenes-shift" if shift else "scenes"
        super().__init__(torch.cat(images), name=name, split=split, num_classes=len(classes),
                         class_names=list(classes), depth_range=(MIN_DEPTH, MAX_DEPTH),
                         label=torch.cat(labels), mask=torch.cat(masks), depth=torch.cat(depths))
        self.seed, self.size, self.shift = seed, size, shift
        #: segmentation classes: 0 = background, k + 1 = shape k
        self.mask_classes = len(classes) + 1


_META = dict(targets=("label", "mask", "depth"), needs_root=False, splits=tuple(SPLIT_IDS),
             num_classes=len(DEFAULT_CLASSES))


@DATASETS.register("scenes", description="synthetic shapes on a perspective ground plane (label/mask/depth)",
                   **_META)
def scenes(root: str | None = None, split: str = "test", **kw) -> ScenesDataset:
    return ScenesDataset(split=split, **kw)


@DATASETS.register("scenes-shift", description="scenes with unseen textures, palettes and lighting; same "
                   "targets as scenes for the same seed", **_META)
def scenes_shift(root: str | None = None, split: str = "test", **kw) -> ScenesDataset:
    if kw.pop("shift", True) is not True:
        raise ValueError("scenes-shift: shift is always True here; use 'scenes' for the unshifted images")
    return ScenesDataset(split=split, shift=True, **kw)

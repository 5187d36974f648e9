"""Corruption speed: robustssl's batched torch corruptions against imagecorruptions 1.1.2, in one process.

For every registered corruption (all 19 when the weather module is present) and each image size, times

* imagecorruptions: ``corrupt(img, severity, name)`` one uint8 image at a time (how it is used), over
  ``--ref-images`` images, severities cycling 1..5;
* robustssl: ``corrupt(x, severity, generator)`` on a float batch of ``--batch`` images, per severity 1..5;

and prints the time per image and the speed-up (reference time / ours). Both use the ImageNet-C parameters
(imagecorruptions has no others, also at 32 px). imagecorruptions 1.1.2 needs two patches to run on numpy 2 /
scikit-image >= 0.19 (``gaussian(multichannel=)`` and ``np.float_``), applied below. Needs the dev extras
(``make install-dev``). Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/corruptions.py            # 224 and 32 px, batch 64
    .venv/bin/python benchmarks/corruptions.py --sizes 32 --ref-images 20
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import skimage.data
import skimage.filters
import torch
from PIL import Image

from robustssl.threats.corruptions import CORRUPTIONS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources deprecation
    import imagecorruptions
    import imagecorruptions.corruptions as icc


def patch_imagecorruptions() -> None:
    """Restore the two APIs imagecorruptions 1.1.2 calls that numpy 2 / scikit-image 0.19+ removed."""
    original = skimage.filters.gaussian

    def gaussian(image, sigma=1, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return original(image, sigma=sigma, **kwargs)

    icc.gaussian = gaussian
    if not hasattr(np, "float_"):
        np.float_ = np.float64


def photographs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 ``(size, size, 3)`` random crops of scikit-image's bundled photographs."""
    rng = np.random.default_rng(seed)
    sources = [getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(np.asarray(Image.fromarray(img[top:top + side, left:left + side]).resize((size, size))))
    return np.stack(out)


def time_reference(name: str, images: np.ndarray) -> float:
    """Seconds per image for imagecorruptions, severities cycling 1..5."""
    start = time.perf_counter()
    for i, img in enumerate(images):
        imagecorruptions.corrupt(img, severity=1 + i % 5, corruption_name=name)
    return (time.perf_counter() - start) / len(images)


def time_ours(name: str, x: torch.Tensor, generator: torch.Generator) -> float:
    """Seconds per image for robustssl on the whole batch, once per severity."""
    corruption = CORRUPTIONS.create(name)
    corruption(x[:2], 3, generator, params="imagenet")  # warm-up: allocator, lazy kernels
    start = time.perf_counter()
    for severity in range(1, 6):
        corruption(x, severity, generator, params="imagenet")
    return (time.perf_counter() - start) / (5 * x.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ref-images", type=int, default=10, help="images per corruption for the reference")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--only", nargs="*", default=None, help="corruption names (default: all registered)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    patch_imagecorruptions()
    np.random.seed(0)  # imagecorruptions only draws from numpy's global RNG
    names = args.only or CORRUPTIONS.names()
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}; "
          f"reference over {args.ref_images} images; ImageNet-C parameters")
    for size in args.sizes:
        images = photographs(max(args.batch, args.ref_images), size)
        x = torch.from_numpy(images[:args.batch]).permute(0, 3, 1, 2).float().div(255).contiguous()
        print(f"\n{size}x{size}")
        print(f"{'corruption':<18} {'imagecorruptions':>17} {'robustssl':>12} {'speed-up':>9}")
        total_ref = total_ours = 0.0
        for name in names:
            ref = time_reference(name, images[:args.ref_images])
            ours = time_ours(name, x, generator)
            total_ref, total_ours = total_ref + ref, total_ours + ours
            print(f"{name:<18} {ref * 1e3:>13.2f} ms {ours * 1e3:>9.3f} ms {ref / ours:>8.1f}x", flush=True)
        print(f"{'all ' + str(len(names)):<18} {total_ref * 1e3:>13.2f} ms {total_ours * 1e3:>9.3f} ms "
              f"{total_ref / total_ours:>8.1f}x")


if __name__ == "__main__":
    main()

"""k-means in torch (k-means++ seeding, Lloyd iterations, batched distances), for AdvCL's pseudo-labels.

Every random choice comes from the ``torch.Generator`` passed in, so a fixed generator gives the same
clustering on any run. Distances are computed ``chunk`` rows at a time as ``‖x‖² − 2 x·c + ‖c‖²``, so memory
stays ``O(chunk · k)`` whatever the number of points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: rows of the point matrix per distance block
DEFAULT_CHUNK = 4096


@dataclass
class KMeansResult:
    """``labels`` (N,) int64 in [0, k); ``centroids`` (k, D); ``inertia`` = sum of squared distances to the
    assigned centroid; ``iterations`` run; ``converged`` when the assignment stopped changing."""

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: float
    iterations: int
    converged: bool


def squared_distances(x: torch.Tensor, centroids: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``(N, k)`` squared Euclidean distances between the rows of ``x`` (N, D) and ``centroids`` (k, D)."""
    c_sq = centroids.pow(2).sum(1)
    blocks = []
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        d = xb.pow(2).sum(1, keepdim=True) - 2 * xb @ centroids.T + c_sq
        blocks.append(d.clamp_min_(0))
    return torch.cat(blocks)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, squared distance to the nearest centroid), ``chunk`` rows at a time."""
    labels, dists = [], []
    for start in range(0, x.shape[0], chunk):
        d = squared_distances(x[start:start + chunk], centroids, chunk)
        best, idx = d.min(dim=1)
        labels.append(idx)
        dists.append(best)
    return torch.cat(labels), torch.cat(dists)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator,
                     chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniformly at random, each next one
    with probability proportional to its squared distance to the nearest centre chosen so far. ``(k, D)``."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    centres = [x[first]]
    closest = squared_distances(x, x[first:first + 1], chunk)[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do, take them in order
            weights = torch.ones_like(closest)
        else:
            weights = closest / total
        pick = int(torch.multinomial(weights.to(generator.device), 1, generator=generator))
        centres.append(x[pick])
        closest = torch.minimum(closest, squared_distances(x, x[pick:pick + 1], chunk)[:, 0])
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, *, max_iter: int = 100,
           chunk: int = DEFAULT_CHUNK) -> KMeansResult:
    """Cluster the rows of ``x`` (N, D) into ``k`` groups: k-means++ seeding from ``generator``, then Lloyd
    iterations until the assignment no longer changes (or ``max_iter``). An empty cluster is re-seeded with
    the point farthest from its centroid, so every label in [0, k) is used when N >= k distinct points.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans expects a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("kmeans: the points contain NaN or inf")
    n = x.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be an int in [1, N] = [1, {n}] (N = number of points), got {k!r}")
    if max_iter < 1:
        raise ValueError(f"kmeans: max_iter must be >= 1, got {max_iter}")
    x = x.float()
    centroids = kmeans_plus_plus(x, k, generator, chunk)
    labels, dist = _nearest(x, centroids, chunk)
    converged, iterations = False, 0
    while iterations < max_iter:
        iterations += 1
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        centroids = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(dist.argmax())
            centroids[empty] = x[far]
            dist[far] = 0  # do not hand the same point to two empty clusters
        new_labels, dist = _nearest(x, centroids, chunk)
        if torch.equal(new_labels, labels):
            converged = True
            break
        labels = new_labels
    return KMeansResult(labels=labels, centroids=centroids, inertia=float(dist.sum()),
                        iterations=iterations, converged=converged)

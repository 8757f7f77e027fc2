"""MAUVE (Pillutla et al., 2021, arXiv 2102.01454): how close the distribution of generated texts is to that of
real texts, from features of both (here the judge's last hidden state, :meth:`CausalLMJudge.features`).

Steps (the settings of the paper's reference package, ``mauve-text`` 0.4, which is not a dependency: it pulls in
faiss, scikit-learn and scipy, about 80 MB, for what is below a few dozen lines of torch; see docs/architecture.md):

1. the feature rows of both sets are scaled to unit length, centred together and projected on the fewest principal
   directions that keep :data:`PCA_VARIANCE` (90%) of their variance;
2. k-means (k-means++ starts, Lloyd steps until no assignment changes or :data:`KMEANS_ITERATIONS`, the best of
   :data:`KMEANS_RUNS` starts by inertia, seeded) cuts the projected rows into ``k = max(2, round(min(n, m)/10))``
   clusters; each set becomes a histogram ``P`` (real) and ``Q`` (generated) over the clusters;
3. the divergence frontier: for ``λ`` on :data:`FRONTIER_POINTS` evenly spaced values in ``[10⁻⁶, 1 − 10⁻⁶]``,
   ``R = λP + (1 − λ)Q`` and the point ``(exp(−c·KL(Q‖R)), exp(−c·KL(P‖R)))`` with ``c`` = :data:`SCALING` (5),
   plus the end points ``(0, 1)`` and ``(1, 0)``;
4. MAUVE = the area under the frontier (trapezoids, points sorted by the first coordinate): 1 for equal histograms,
   near 0 (0.0018 for ``c = 5``) for disjoint ones.

Everything is float64 and runs on the CPU; the result depends only on the features and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowlm.errors import DataError

PCA_VARIANCE = 0.9
KMEANS_RUNS = 5
KMEANS_ITERATIONS = 500
FRONTIER_POINTS = 25
SCALING = 5.0
SEED = 25
DEFINITION = (
    "MAUVE (Pillutla et al. 2021) between the real and the generated texts' judge features (the judge's last hidden "
    f"state at each text's last token): rows scaled to unit length, PCA to {PCA_VARIANCE:.0%} of the variance, "
    f"k-means (k = max(2, round(n/10)), best of {KMEANS_RUNS} k-means++ starts, at most {KMEANS_ITERATIONS} Lloyd "
    f"steps, seed {SEED}), area under the divergence frontier of the two cluster histograms ({FRONTIER_POINTS} "
    f"mixture weights, scaling c = {SCALING:g}); the settings of the mauve-text package; 1 = indistinguishable"
)


@dataclass
class MauveResult:
    """``score`` (MAUVE), the cluster histograms ``p`` (real) and ``q`` (generated) [k] and the number of PCA
    directions kept."""

    score: float
    p: torch.Tensor
    q: torch.Tensor
    directions: int


def default_clusters(n: int, m: int) -> int:
    """``max(2, round(min(n, m)/10))``: the number of clusters for ``n`` real and ``m`` generated texts."""
    return max(2, round(min(n, m) / 10))


def kl(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``KL(p‖r) = Σ p·log(p/r)`` over the last axis of histograms [..., k] (terms with ``p = 0`` are 0; ``r > 0``
    wherever ``p > 0``)."""
    p, r = torch.broadcast_tensors(p, r)
    terms = torch.where(p > 0, p * (p / torch.where(p > 0, r, 1.0)).log(), torch.zeros_like(p))
    return terms.sum(-1)


def frontier(p: torch.Tensor, q: torch.Tensor, points: int = FRONTIER_POINTS, scaling: float = SCALING) -> torch.Tensor:
    """The divergence frontier of histograms ``p``, ``q`` [k]: [points + 2, 2] rows ``(exp(−c·KL(q‖R)),
    exp(−c·KL(p‖R)))`` for ``R = λp + (1 − λ)q``, λ from 10⁻⁶ to 1 − 10⁻⁶, then ``(0, 1)`` and ``(1, 0)``."""
    p, q = p.double(), q.double()
    lam = torch.linspace(1e-6, 1 - 1e-6, points, dtype=torch.float64)[:, None]
    r = lam * p + (1 - lam) * q  # [points, k]
    inner = torch.stack([torch.exp(-scaling * kl(q, r)), torch.exp(-scaling * kl(p, r))], dim=1)
    ends = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    return torch.cat([ends[:1], inner, ends[1:]])


def frontier_area(p: torch.Tensor, q: torch.Tensor, points: int = FRONTIER_POINTS, scaling: float = SCALING) -> float:
    """MAUVE of two histograms [k]: the trapezoid area under :func:`frontier`, its points sorted by x."""
    curve = frontier(p, q, points, scaling)
    curve = curve[torch.argsort(curve[:, 0], stable=True)]
    return float(torch.trapezoid(curve[:, 1], curve[:, 0]))


def principal_projection(x: torch.Tensor, variance: float = PCA_VARIANCE) -> torch.Tensor:
    """Rows of ``x`` [N, d] centred and projected on the fewest principal directions keeping ``variance`` of the
    total: [N, r]."""
    centred = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    share = (s * s).cumsum(0) / (s * s).sum().clamp(min=torch.finfo(s.dtype).tiny)
    keep = int((share < variance).sum()) + 1
    return centred @ vh[: min(keep, vh.shape[0])].T


def kmeans(x: torch.Tensor, k: int, runs: int = KMEANS_RUNS, iterations: int = KMEANS_ITERATIONS,
           seed: int = SEED) -> tuple[torch.Tensor, float]:  # fmt: skip
    """Cluster labels [N] of the rows of ``x`` [N, r] and their inertia (sum of squared distances to the centres):
    the best of ``runs`` k-means++ starts, each followed by Lloyd steps until no label changes."""
    if not 1 <= k <= x.shape[0]:
        raise DataError(f"k-means with {k} clusters needs at least {k} rows, got {x.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, float] | None = None
    for _ in range(runs):
        centres = _plus_plus(x, k, generator)
        labels = _nearest(x, centres)
        for _ in range(iterations):
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
            new = _nearest(x, centres)
            if torch.equal(new, labels):
                break
            labels = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        if best is None or inertia < best[1]:
            best = (labels, inertia)
    return best


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index [N] of the nearest centre of each row: argmin of ``|c|² − 2·x·c`` (``|x|²`` is the same for all)."""
    return ((centres * centres).sum(1)[None, :] - 2 * x @ centres.T).argmin(1)


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ starting centres [k, r]: the first uniform, each next with probability ∝ squared distance to the
    nearest chosen one."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    centres = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0:
            pick = int(torch.multinomial(nearest / total, 1, generator=generator))
        else:  # every row sits on a centre already: any row will do
            pick = int(torch.randint(x.shape[0], (1,), generator=generator))
        centres.append(x[pick])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    return torch.stack(centres)


def mauve(real: torch.Tensor, generated: torch.Tensor, *, clusters: int | None = None, seed: int = SEED,
          variance: float = PCA_VARIANCE, runs: int = KMEANS_RUNS, iterations: int = KMEANS_ITERATIONS,
          points: int = FRONTIER_POINTS, scaling: float = SCALING) -> MauveResult:  # fmt: skip
    """MAUVE between feature rows ``real`` [n, d] and ``generated`` [m, d] (module docstring)."""
    real, generated = torch.as_tensor(real).double().cpu(), torch.as_tensor(generated).double().cpu()
    if real.dim() != 2 or generated.dim() != 2 or real.shape[1] != generated.shape[1]:
        raise DataError(
            f"MAUVE needs two feature matrices of equal width, got {tuple(real.shape)} and {tuple(generated.shape)}"
        )
    n, m = real.shape[0], generated.shape[0]
    k = default_clusters(n, m) if clusters is None else clusters
    if n < 2 or m < 2 or n + m < k:
        raise DataError(f"MAUVE needs at least 2 texts per side and {k} in all, got {n} real and {m} generated")
    x = torch.cat([real, generated])
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    projected = principal_projection(x, variance)
    labels, _ = kmeans(projected, k, runs, iterations, seed)
    p = torch.bincount(labels[:n], minlength=k).double() / n
    q = torch.bincount(labels[n:], minlength=k).double() / m
    return MauveResult(frontier_area(p, q, points, scaling), p, q, projected.shape[1])

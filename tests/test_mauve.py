"""flowlm.eval.mauve: the divergence frontier and its area against closed forms, k-means and PCA on known data,
and MAUVE on samples whose distributions are known (fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from flowlm.errors import DataError
from flowlm.eval.mauve import default_clusters, frontier, frontier_area, kl, kmeans, mauve, principal_projection


def test_kl_of_histograms():
    p, r = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert float(kl(p, r)) == pytest.approx(math.log(2), rel=1e-12)
    assert float(kl(p, p)) == 0.0


def test_equal_histograms_score_one():
    p = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    # R = λP + (1 − λ)P equals P up to float64 rounding: KL of a few ulps, area 1 within 1e-12
    assert frontier_area(p, p) == pytest.approx(1.0, abs=1e-12)


def test_disjoint_histograms_follow_the_closed_form():
    """Disjoint P and Q: KL(Q‖R) = −log(1 − λ), KL(P‖R) = −log λ, so the frontier is x = (1 − λ)^c, y = λ^c, i.e.
    x^(1/c) + y^(1/c) = 1, whose area is ∫₀¹ (1 − x^(1/c))^c dx = c·B(c, c + 1) = Γ(c+1)² / Γ(2c+1) (0.0018 at c = 5).
    The frontier points are exact; the trapezoid rule over 20,001 points is within 1e-6 of the area (the curve's
    second derivative is bounded away from its ends, where it is flat)."""
    p, q = torch.tensor([0.5, 0.5, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.3, 0.7])
    curve = frontier(p, q, points=5)
    lam = torch.linspace(1e-6, 1 - 1e-6, 5, dtype=torch.float64)
    torch.testing.assert_close(curve[1:-1, 0], (1 - lam) ** 5, rtol=1e-12, atol=0)
    torch.testing.assert_close(curve[1:-1, 1], lam**5, rtol=1e-12, atol=0)
    exact = math.gamma(6) ** 2 / math.gamma(11)
    assert abs(frontier_area(p, q, points=20001) - exact) < 1e-6
    assert frontier_area(p, q) < 0.005  # the default 25 points stay near it


def test_area_falls_as_the_histograms_part():
    p = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    scores = [frontier_area(p, torch.tensor([0.25 + a, 0.25 + a, 0.25 - a, 0.25 - a])) for a in (0.0, 0.05, 0.15, 0.24)]
    assert scores[0] == pytest.approx(1.0, abs=1e-12), scores
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores


def test_principal_projection_keeps_the_requested_variance():
    g = torch.Generator().manual_seed(0)
    # variances 16, 4, 0.01 along three orthogonal axes, rotated: 90% of the total needs the first two directions
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    x = (torch.randn(4000, 3, generator=g, dtype=torch.float64) * torch.tensor([4.0, 2.0, 0.1])) @ rotation.T
    assert principal_projection(x, 0.9).shape == (4000, 2)
    assert principal_projection(x, 0.5).shape == (4000, 1)
    assert principal_projection(x, 0.9999).shape == (4000, 3)


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    truth = torch.arange(300) % 3
    x = centres[truth] + torch.randn(300, 2, generator=g, dtype=torch.float64)
    labels, inertia = kmeans(x, 3)
    # each found cluster is exactly one true cluster (unit-variance points 10 apart: no point is nearer another centre)
    for c in range(3):
        assert len(set(truth[labels == c].tolist())) == 1
    assert inertia == pytest.approx(float(((x - centres[truth]) ** 2).sum()), rel=0.05)
    assert torch.equal(kmeans(x, 3)[0], labels)
    with pytest.raises(DataError, match="needs at least"):
        kmeans(x[:2], 3)


def test_mauve_of_known_distributions():
    """Features of 500 + 500 draws (k = 50 clusters). Same distribution: the histograms differ only by sampling
    noise (each cluster's share has a standard error of about 0.0045 around 0.02), so MAUVE is near 1 (0.93 to 0.97
    over seeds 2-5); shifting one coordinate by 1 and 2 standard deviations moves histogram mass (0.65-0.75 and
    0.21-0.24 over those seeds), asserted with margins of 0.1; disjoint clouds score
    near the closed-form floor 0.0018."""
    g = torch.Generator().manual_seed(2)
    d = 8
    real = torch.randn(500, d, generator=g, dtype=torch.float64) + 3.0
    same = torch.randn(500, d, generator=g, dtype=torch.float64) + 3.0
    assert default_clusters(500, 500) == 50
    scores = []
    for shift in (0.0, 1.0, 2.0):
        generated = same.clone()
        generated[:, 0] += shift
        scores.append(mauve(real, generated).score)
    assert scores[0] > 0.85 and scores[0] - 0.1 > scores[1] > scores[2] + 0.1, scores
    far = torch.randn(500, d, generator=g, dtype=torch.float64) - 3.0
    assert mauve(real, far).score < 0.01
    assert mauve(real, same).score == scores[0]  # seeded: the same features give the same number


def test_mauve_refuses_bad_features():
    with pytest.raises(DataError, match="equal width"):
        mauve(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(DataError, match="at least 2 texts"):
        mauve(torch.zeros(1, 3), torch.zeros(5, 3))

"""Float tolerances derived from dtype and size, written once (docs/architecture.md, "Tests and tolerances").

Two float computations of one quantity that differ in the order of their operations (another kernel, vector
width or MKL/oneDNN code path, thread count, batch split, attention backend) are not bit-equal, and how far
apart they land depends on the CPU: a tolerance tuned on one vendor's CPU fails on another's (issue 19).

Derivation. Each float operation rounds with a relative error of at most u = eps/2. A sum of n terms whose
partial sums are bounded by S is off by at most (n - 1)·u·S (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., §4.2); the roundings are independent and of either sign, so in practice the error is a
random walk of about sqrt(n)·u·S (ibid. §2.8). Two evaluations in different orders differ by at most the sum
of their errors, and a pass through a network chains a few such reductions, hence

    atol = c · eps · sqrt(n) · S,    c = 4,

with n the number of products accumulated into one result along its longest chain (a matrix product of width
d over B·L tokens: B·L·d) and S the largest magnitude being added. What this does NOT cover: a comparison of
a float32 pipeline with float64 (its error is the float32 one, use dtype=float32), and cancellation where S
is much larger than the result (pass the parts' magnitude as ``scale``).

Where a claim is exact equality up to reordering and the code runs in float64 throughout, the tests compute in
float64 and the same formula gives ~1e-13. Either way a real error (a sign, a t/τ clock mix-up, an off-by-one
row or position) moves results by 1e-3 or more, orders of magnitude above these tolerances.

Elementwise formulas (n = 1) keep ``torch.testing.assert_close``'s defaults: for float32 rtol = 1.3e-6 is
~11 ulp and atol = 1e-5, above the few ulp by which vectorised and scalar exp/log/tanh differ.

Bit-equality (``torch.equal``) is kept only where both sides run the same kernels on the same numbers in the
same process, or compare integers; each such test says why.
"""

from __future__ import annotations

import math

import torch

C = 4.0


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def rounding_atol(dtype: torch.dtype, n: int, scale: float, c: float = C) -> float:
    """``c · eps(dtype) · sqrt(n) · scale``: the absolute distance two orderings of a computation accumulating
    ``n`` products of magnitude up to ``scale`` may land apart (module docstring)."""
    return c * eps(dtype) * math.sqrt(n) * float(scale)


def assert_close_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor, n: int, scale: float | None = None,
                                dtype: torch.dtype | None = None, msg: str | None = None) -> float:  # fmt: skip
    """Assert ``|actual − expected| <= rounding_atol(dtype, n, scale)`` elementwise; returns the tolerance.

    ``scale`` defaults to the largest |value| of either side, ``dtype`` to ``expected``'s (pass float32 when
    a float32 computation was widened for the comparison)."""
    if scale is None:
        scale = max(actual.abs().max().item(), expected.abs().max().item())
    atol = rounding_atol(dtype or expected.dtype, n, scale)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, check_dtype=False, msg=msg)
    return atol

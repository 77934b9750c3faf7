"""Least-squares growth fits of bytes per token, and the growth class each fit implies.

The class comes from the measured slope alone, in units of one d-vector per token
(d · itemsize bytes): a variant that keeps one more d-vector alive per sublayer has slope 1.

  depth sweep:  slope in d-vectors per sublayer; `O(L·d)` if (slope - floor) >= GROWS_FROM,
                else `O(d)` (flat in L). `floor` is what any residual network must keep under
                the view: for checkpointing every k blocks, the streams (1; HC, mHC: n) at each
                segment boundary = streams/(2k) per sublayer; 0 elsewhere.
  N sweep:      slope in d-vectors per AttnRes block; `O(N·d)` if >= GROWS_FROM, else `O(d)`.

GROWS_FROM = 1/4: a quarter d-vector more per sublayer (one per two transformer blocks), or per
AttnRes block, is already state proportional to L (or N); a pipeline boundary at 1/2 depth sees
1/2 per block. Per-token *scalars* per source (e.g. cached depth-attention logits, 4 bytes each)
stay far below it at any real width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROWS_FROM = 0.25


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    r2: float
    n: int


def fit_line(x, y) -> Fit:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a fit needs at least two distinct x values")
    A = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(A, y, rcond=None)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    # a constant series fitted exactly is a perfect fit, not 0/0
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res <= 1e-12 * max(1.0, float(y @ y)) else 0.0)
    return Fit(float(slope), float(intercept), r2, len(x))


def depth_class(slope_dvec: float, floor_dvec: float = 0.0) -> str:
    return "O(L·d)" if slope_dvec - floor_dvec >= GROWS_FROM else "O(d)"


def n_class(slope_dvec: float) -> str:
    return "O(N·d)" if slope_dvec >= GROWS_FROM else "O(d)"


def declared_depth_class(state_lo: int, state_hi: int, L_lo: int, L_hi: int) -> str:
    """The class a variant's declared state_vectors() implies across the same depths."""
    return depth_class((state_hi - state_lo) / (L_hi - L_lo))


def declared_n_class(state_lo: int, state_hi: int, N_lo: int, N_hi: int) -> str:
    return n_class((state_hi - state_lo) / (N_hi - N_lo))

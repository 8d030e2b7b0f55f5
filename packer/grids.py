"""Patch grids that keep aspect: the aspect band and exact searches over it, vectorised with numpy.

Legend: arrays broadcast over samples (and, for callers, over time candidates); the last
axis K of the internal arrays holds candidate grids. x is a sample's short side and y its
long side, both counted in patches; nx, ny are the native sides floored to the patch.

The aspect band. A grid (gx, gy) keeps the aspect of a native frame within one patch per
side when one scale s puts both sides within a patch of the exact size:
|gx - s*X| < 1 and |gy - s*Y| < 1, with X = hx/px and Y = hy/py the native sides in
patches (real numbers). With D = hx*py and N = hy*px (N >= D on the short side) that is,
in integers, so no float rounding decides membership:

    (gy + 1) * D > N * (gx - 1)   and   (gy - 1) * D < N * (gx + 1)
    <=>  N*(gx-1) // D  <=  gy  <=  ceil(N*(gx+1) / D)

Searches (each exact; tests check them against brute force):
  * largest(P): the grid with the most cells <= P, within native and the band.
  * smallest(c, P): the grid with the fewest cells >= c (and <= P), at least (x0, y0).
Along x the product is monotone except where the hyperbola x*y = P (or c) crosses the band:
x in (x1, x1 + 1 + D/N], x1 the root of r*x^2 + (r+1)*x = P with r = N/D. So a search
evaluates that window (4 integers) plus the one or two points where a cap or a floor
binds, instead of scanning every side length.

Arithmetic is float64 on integer values: every operand stays below 2**53, where products
are exact and floor(a / b) of two such integers is exact too (the quotient's rounding
error, below a/b * 2**-53, is less than its distance 1/b to the next integer), and float
division is several times faster than numpy's int64 floor division.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "largest", "smallest"]

_INF = float("inf")


@dataclass
class Band:
    """The aspect band of native frames (H, W) under patch (ph, pw), short side first (float64 arrays)."""

    d: np.ndarray  # hx * py
    n: np.ndarray  # hy * px, >= d
    nx: np.ndarray  # short side in whole patches
    ny: np.ndarray  # long side in whole patches
    swap: np.ndarray  # True where the short side is the width

    @classmethod
    def of(cls, height, width, ph: int, pw: int) -> Band:
        h, w = np.asarray(height, dtype=np.float64), np.asarray(width, dtype=np.float64)
        swap = h * pw > w * ph  # height is the long side: x is the width
        hx, px, hy, py = np.where(swap, w, h), np.where(swap, pw, ph), np.where(swap, h, w), np.where(swap, ph, pw)
        return cls(hx * py, hy * px, np.floor(hx / px), np.floor(hy / py), swap)

    def __getitem__(self, idx) -> Band:
        return Band(self.d[idx], self.n[idx], self.nx[idx], self.ny[idx], self.swap[idx])

    def expand(self) -> Band:
        """Add a trailing axis, so that the band broadcasts against [..., K] candidates."""
        return Band(*(a[..., None] for a in (self.d, self.n, self.nx, self.ny, self.swap)))

    def y_lo(self, x: np.ndarray) -> np.ndarray:
        return np.floor(self.n * (x - 1) / self.d)

    def y_hi(self, x: np.ndarray) -> np.ndarray:
        return np.ceil(self.n * (x + 1) / self.d)

    def hw(self, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(grid rows, grid cols) as int64 from (short, long) sides."""
        return np.where(self.swap, gy, gx).astype(np.int64), np.where(self.swap, gx, gy).astype(np.int64)


def _root(band: Band, p: np.ndarray) -> np.ndarray:
    """floor of the x where the band's upper edge y = r(x+1)+1 meets the hyperbola x*y = p."""
    r = band.n / band.d
    return np.floor((np.sqrt((r + 1) ** 2 + 4 * r * np.maximum(p, 0)) - (r + 1)) / (2 * r))


def _pick(k: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """a[..., k] for each array (k: argmax/argmin over the last axis); flat indexing, as
    np.take_along_axis costs ~30 us of Python per call on the small arrays of one sample."""
    shape, kk = arrays[0].shape, arrays[0].shape[-1]
    flat = np.arange(k.size) * kk + k.reshape(-1)
    return [a.reshape(-1)[flat].reshape(shape[:-1]) for a in arrays]


def _stack(shape: tuple[int, ...], parts: list) -> np.ndarray:
    """Candidates [..., K] from K arrays that broadcast to `shape` (cheaper than broadcast_arrays + concatenate)."""
    out = np.empty((*shape, len(parts)))
    for i, part in enumerate(parts):
        out[..., i] = part
    return out


def largest(band: Band, p, *, x0=None, y0=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most cells gx*gy <= p in the band, x0 <= gx <= nx, y0 <= gy <= ny (floors default to 1).

    Returns float64 (gx, gy, cells); cells = -1 (and gx = gy = 0) where no grid qualifies.
    Candidates: the crossing window (below it the band caps y and the product grows with x;
    above it no y qualifies), the native short side, the last x the native long side fills,
    and with floors x0 and the last x the floor y0 leaves room for.
    """
    b = band.expand()
    p = np.asarray(p, dtype=np.float64)[..., None]
    base = _root(band, p[..., 0])[..., None]
    ny_fit = np.minimum(np.floor(p / np.maximum(b.ny, 1)), np.ceil((b.ny + 1) * b.d / b.n))
    cand = [base - 1, base, base + 1, base + 2, b.nx, ny_fit]
    lo_x = 1.0
    if x0 is not None:
        x0, y0 = (np.asarray(v, dtype=np.float64)[..., None] for v in (x0, y0))
        cand += [x0, np.floor(p / y0)]
        lo_x = np.maximum(x0, 1)
    shape = np.broadcast_shapes(p.shape[:-1], band.nx.shape)
    x = np.minimum(np.maximum(_stack(shape, [c[..., 0] for c in cand]), lo_x), np.maximum(b.nx, 1))
    y = np.minimum(np.minimum(b.y_hi(x), b.ny), np.floor(p / x))
    y_min = np.maximum(b.y_lo(x), 1) if x0 is None else np.maximum(b.y_lo(x), np.maximum(y0, 1))
    ok = y >= y_min  # p < 1 or ny < 1 leave y < 1: no grid
    if x0 is not None:
        ok &= x >= x0
    cells = np.where(ok, x * y, -1.0)
    gx, gy, best = _pick(cells.argmax(axis=-1), x, y, cells)
    none = (best < 0) | (band.nx < 1)
    return np.where(none, 0, gx), np.where(none, 0, gy), np.where(none, -1.0, best)


def smallest(band: Band, c, p, *, x0=1, y0=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fewest cells gx*gy >= c (and <= p) in the band, x0 <= gx <= nx, y0 <= gy <= ny.

    Returns float64 (gx, gy, cells); cells = -1 (and gx = gy = 0) where no grid qualifies.
    Candidates: the crossing window (below it no y qualifies; above it the band's lower
    edge sets y and the product grows with x) and the first x where the floor y0 serves.
    """
    b = band.expand()
    c, p, x0, y0 = (np.asarray(v, dtype=np.float64)[..., None] for v in (c, p, x0, y0))
    c, y0 = np.maximum(c, 1), np.maximum(y0, 1)
    base = _root(band, c[..., 0])[..., None]
    x_y0 = np.maximum(np.ceil(c / y0), np.floor((y0 - 1) * b.d / b.n))
    shape = np.broadcast_shapes(c.shape[:-1], p.shape[:-1], x0.shape[:-1], band.nx.shape)
    cand = _stack(shape, [v[..., 0] for v in (base, base + 1, base + 2, base + 3, x_y0)])
    x = np.minimum(np.maximum(cand, np.maximum(x0, 1)), np.maximum(b.nx, 1))
    y = np.maximum(np.maximum(np.ceil(c / x), b.y_lo(x)), y0)
    ok = (y <= np.minimum(np.minimum(b.y_hi(x), b.ny), np.floor(p / x))) & (x >= x0) & (x <= b.nx)
    cells = np.where(ok, x * y, _INF)
    gx, gy, best = _pick(cells.argmin(axis=-1), x, y, cells)
    none = best == _INF
    return np.where(none, 0, gx), np.where(none, 0, gy), np.where(none, -1.0, best)

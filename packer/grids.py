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
Along x the product is monotone except where the hyperbola x*y = P (or c) crosses the band,
a window of at most 1 + D/N <= 2 patches around the root of r*x^2 + (r+1)*x = P, r = N/D.
So each search evaluates that window plus the few points where a cap or a floor binds:
8 candidates per sample instead of a scan over every side length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "largest", "smallest"]

_BIG = np.iinfo(np.int64).max // 4


@dataclass
class Band:
    """The aspect band of native frames (H, W) under patch (ph, pw), short side first."""

    d: np.ndarray  # hx * py
    n: np.ndarray  # hy * px, >= d
    nx: np.ndarray  # short side in whole patches
    ny: np.ndarray  # long side in whole patches
    swap: np.ndarray  # True where the short side is the width

    @classmethod
    def of(cls, height, width, ph: int, pw: int) -> Band:
        h, w = np.asarray(height, dtype=np.int64), np.asarray(width, dtype=np.int64)
        swap = h * pw > w * ph  # height is the long side: x is the width
        hx, px, hy, py = np.where(swap, w, h), np.where(swap, pw, ph), np.where(swap, h, w), np.where(swap, ph, pw)
        return cls(hx * py, hy * px, hx // px, hy // py, swap)

    def __getitem__(self, idx) -> Band:
        return Band(self.d[idx], self.n[idx], self.nx[idx], self.ny[idx], self.swap[idx])

    def expand(self) -> Band:
        """Add a trailing axis, so that the band broadcasts against [..., K] candidates."""
        return Band(*(a[..., None] for a in (self.d, self.n, self.nx, self.ny, self.swap)))

    def y_lo(self, x: np.ndarray) -> np.ndarray:
        return self.n * (x - 1) // self.d

    def y_hi(self, x: np.ndarray) -> np.ndarray:
        return -(-self.n * (x + 1) // self.d)

    def hw(self, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(grid rows, grid cols) from (short, long) sides."""
        return np.where(self.swap, gy, gx), np.where(self.swap, gx, gy)


def _root(band: Band, p: np.ndarray) -> np.ndarray:
    """floor of the x where the band's upper edge y = r(x+1)+1 meets the hyperbola x*y = p."""
    r = band.n / band.d
    x1 = (np.sqrt((r + 1) ** 2 + 4 * r * np.maximum(p, 0)) - (r + 1)) / (2 * r)
    return np.floor(x1).astype(np.int64)


def largest(band: Band, p, *, x0=1, y0=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most cells gx*gy <= p in the band, x0 <= gx <= nx, y0 <= gy <= ny.

    Returns (gx, gy, cells); cells = -1 (and gx = gy = 0) where no grid qualifies.
    Candidates: the crossing window, the native short side, and where the native long side
    stops fitting (by the cap p or by the band).
    """
    b = band.expand()
    p, x0, y0 = (np.asarray(v, dtype=np.int64)[..., None] for v in (p, x0, y0))
    base = _root(band, np.asarray(p[..., 0]))[..., None]
    ny_fit = np.minimum(p // np.maximum(b.ny, 1), -(-(b.ny + 1) * b.d // b.n))  # last x that the long side fills
    cand = np.concatenate(
        np.broadcast_arrays(base - 1, base, base + 1, base + 2, base + 3, b.nx, np.minimum(b.nx, ny_fit), x0), axis=-1
    )
    x = np.clip(cand, np.maximum(x0, 1), np.maximum(b.nx, 1))
    y = np.minimum(np.minimum(b.y_hi(x), b.ny), p // x)
    ok = (y >= np.maximum(np.maximum(b.y_lo(x), y0), 1)) & (x >= x0) & (x <= b.nx) & (p >= 1)
    cells = np.where(ok, x * y, -1)
    k = cells.argmax(axis=-1)[..., None]
    best = np.take_along_axis(cells, k, axis=-1)[..., 0]
    gx, gy = np.take_along_axis(x, k, axis=-1)[..., 0], np.take_along_axis(y, k, axis=-1)[..., 0]
    none = best < 0
    return np.where(none, 0, gx), np.where(none, 0, gy), best


def smallest(band: Band, c, p, *, x0=1, y0=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fewest cells gx*gy >= c (and <= p) in the band, x0 <= gx <= nx, y0 <= gy <= ny.

    Returns (gx, gy, cells); cells = -1 (and gx = gy = 0) where no grid qualifies.
    Candidates: the crossing window, the floor x0, and where the floor y0 starts to bind.
    """
    b = band.expand()
    c, p, x0, y0 = (np.asarray(v, dtype=np.int64)[..., None] for v in (c, p, x0, y0))
    c = np.maximum(c, 1)
    base = _root(band, np.asarray(c[..., 0]))[..., None]
    y0b = np.maximum(y0, 1)
    x_y0 = np.maximum(np.maximum(x0, -(-c // y0b)), (y0b - 1) * b.d // b.n)  # first x where y = y0 serves
    cand = np.concatenate(np.broadcast_arrays(base - 1, base, base + 1, base + 2, base + 3, x0, x_y0), axis=-1)
    x = np.clip(cand, np.maximum(x0, 1), np.maximum(b.nx, 1))
    y = np.maximum(np.maximum(-(-c // x), b.y_lo(x)), y0b)
    ok = (y <= np.minimum(np.minimum(b.y_hi(x), b.ny), p // x)) & (x >= x0) & (x <= b.nx)
    cells = np.where(ok, x * y, _BIG)
    k = cells.argmin(axis=-1)[..., None]
    best = np.take_along_axis(cells, k, axis=-1)[..., 0]
    gx, gy = np.take_along_axis(x, k, axis=-1)[..., 0], np.take_along_axis(y, k, axis=-1)[..., 0]
    none = best == _BIG
    return np.where(none, 0, gx), np.where(none, 0, gy), np.where(none, -1, best)

"""plan_sized: choose each sample's size with its row in mind, from native sizes alone.

Legend: n samples; a grid is (T', H', W') in patches and holds T'*H'*W' tokens.

Whole-sample packers are capped by the size distribution (the Martello-Toth L2 bound): a
sample larger than L/2 never shares a row, and the gap its budget fit leaves is smaller
than any other sample. plan_sized plans on native sizes (read from container headers,
before anything is decoded) and gives each sample a range of token counts:

  * pref: its plain budget fit (fit_budget at its budget);
  * lo:   the fewest tokens of any grid whose every side, frames included, is at least
          min_scale of the fit's (so a clip may also be shortened in time);
  * hi:   pref, or more where the sample's cap max_tokens exceeds its budget (NaViT random
          resolution: StreamPacker lets a sample grow as well as shrink there).

Any count c in [lo, hi] is reachable: the grid with the fewest tokens >= c (exact search
in the aspect band, grids.py), then `drops` = (its tokens - c) tokens dropped at random
after patchify. Rows come from best fit over those ranges (bins.BestFit.add_range): a
sample whose range covers an open row's room closes that row exactly, at the size nearest
its fit; otherwise it goes whole at its fit. Offline (buffer=None) samples arrive by
decreasing fit. Online (buffer=k) at most k rows are open and at most k samples wait: the
samples arrive in windows of k, each placed largest fit first (best fit decreasing over
what is at hand, which brings online fill to the offline value; benchmarks/README.md).

What it cannot do: rows whose samples all sit at their budget hold no more than the sum
of their fits, since no target may exceed max_tokens; sizing fills the rows whole-sample
packing cannot share (samples comparable to L), and the gaps small samples can close.

Cost: numpy for the sizes (about 6 candidate grids per sample and time step), a sort,
and one bisect per sample in the engine: O(n log n).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bins import BestFit
from .budget import CHUNK, FIT_REASONS, fit_grids
from .errors import SampleError
from .grids import Band, largest, smallest

__all__ = ["SizedPlan", "SizeRanges", "plan_sized", "size_ranges"]

_TRIM_TRIES = 4  # temporal grids tried per target search: the reference and 3 shorter


@dataclass(frozen=True)
class SizedPlan:
    """plan_sized's result; unpacks as `rows, targets = plan`.

    rows:       rows of sample indices, each index exactly once, <= max_len tokens a row
    targets:    (T, H, W) per sample: the size to resize it to (input units, T may be 1)
    drops:      tokens to drop at random after patchify, per sample (0 for most)
    kept:       tokens each sample keeps: (T/pt) * (H/ph) * (W/pw) - drops
    fit_tokens: tokens of each sample's plain budget fit (what whole-sample packers place)
    """

    rows: list[list[int]]
    targets: list[tuple[int, int, int]]
    drops: list[int]
    kept: list[int]
    fit_tokens: list[int]

    def __iter__(self):
        return iter((self.rows, self.targets))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return (self.rows, self.targets)[i]

    @property
    def given_up(self) -> int:
        """Tokens given up to sizing: sum over samples of max(0, fit tokens - kept tokens)."""
        return sum(max(0, f - k) for f, k in zip(self.fit_tokens, self.kept))


@dataclass
class SizeRanges:
    """The size range of each sample (numpy arrays over n samples) and the search for its target."""

    patch: tuple[int, int, int]
    band: Band
    image: np.ndarray  # [n] bool: the target has 1 frame
    gt_max: np.ndarray  # [n] temporal patches the clip offers (after max_frames)
    cap: np.ndarray  # [n] most tokens a target grid may hold
    fit: np.ndarray  # [n, 3] grid of the plain budget fit
    top: np.ndarray  # [n, 3] grid of the fit at the cap (== fit unless the cap exceeds the budget)
    floor: np.ndarray  # [n, 3] smallest grid side allowed: ceil(min_scale * fit side)
    lo: np.ndarray  # [n] fewest tokens
    pref: np.ndarray  # [n] tokens of the fit
    hi: np.ndarray  # [n] most tokens

    def targets(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For kept counts in [lo, hi]: (grid [n, 3], frames [n], drops [n]) with the fewest tokens >= count."""
        counts = np.asarray(counts, dtype=np.int64)
        grid = self.fit.copy()
        moved = np.flatnonzero(counts != self.pref)
        if moved.size:
            grid[moved] = self._search(moved, counts[moved])
        tokens = grid.prod(axis=1)
        frames = np.where(self.image, 1, grid[:, 0] * self.patch[0])
        return grid, frames, tokens - counts

    def _search(self, idx: np.ndarray, c: np.ndarray) -> np.ndarray:
        grow = c > self.pref[idx]
        ref = np.where(grow, self.top[idx, 0], self.fit[idx, 0])
        fallback = np.where(grow[:, None], self.top[idx], self.fit[idx])  # holds >= c tokens
        t0, h0, w0 = self.floor[idx, 0], self.floor[idx, 1], self.floor[idx, 2]
        gt_K = ref[:, None] - np.arange(_TRIM_TRIES)
        gt_K = np.where(gt_K >= t0[:, None], gt_K, 0)
        band = self.band[idx]
        x0, y0 = np.where(band.swap, w0, h0), np.where(band.swap, h0, w0)
        safe = np.maximum(gt_K, 1)
        gx, gy, cells = smallest(band.expand(), -(-c[:, None] // safe), self.cap[idx, None] // safe, x0=x0[:, None], y0=y0[:, None])
        tokens = np.where((gt_K > 0) & (cells > 0), gt_K * cells, np.inf)
        k = tokens.argmin(axis=1)[:, None]
        pick = lambda a: np.take_along_axis(a, k, axis=1)[:, 0]  # noqa: E731
        gh, gw = band.hw(pick(gx), pick(gy))
        found = np.stack([pick(gt_K), gh, gw], axis=1)
        use = (pick(tokens) <= fallback.prod(axis=1))[:, None]
        return np.where(use, found, fallback)


def size_ranges(sizes: np.ndarray, *, patch, max_tokens, budgets=None, max_frames=None, min_scale=0.9, time_trim: int = 3) -> SizeRanges:
    """Size ranges of samples with native sizes [n, 3] (validated ints; see plan_sized).

    max_tokens, budgets, max_frames and min_scale are scalars or arrays over samples.
    Raises SampleError naming the first sample that has no fit (empty, too_small, too_long).
    """
    pt, ph, pw = patch
    t, h, w = sizes[:, 0], sizes[:, 1], sizes[:, 2]
    n = len(sizes)
    cap = np.broadcast_to(np.asarray(max_tokens, dtype=np.int64), (n,))
    budget = cap if budgets is None else np.broadcast_to(np.asarray(budgets, dtype=np.int64), (n,))
    fit, _, reason = fit_grids(t, h, w, patch=patch, max_tokens=budget, max_frames=max_frames, time_trim=time_trim)
    if reason.any():
        i = int(np.flatnonzero(reason)[0])
        raise SampleError(FIT_REASONS[reason[i]], f"sample {i}: size (T, H, W) = {tuple(sizes[i].tolist())} has no fit at patch {patch}, budget {int(budget[i])} ({FIT_REASONS[reason[i]]})")
    pref = fit.prod(axis=1)
    ms = np.broadcast_to(np.asarray(min_scale, dtype=np.float64), (n,))
    floor = np.maximum(np.ceil(ms[:, None] * fit - 1e-9).astype(np.int64), 1)
    band = Band.of(h, w, ph, pw)
    tt = t if max_frames is None else np.minimum(t, max_frames)
    image = (tt < pt) | (tt == 1)
    gt_max = np.where(image, 1, tt // pt)
    lo, top = pref.copy(), fit.copy()  # the fit itself always qualifies
    grow = cap > budget
    for a in range(0, n, CHUNK):  # chunks keep the candidate arrays in cache
        c = slice(a, a + CHUNK)
        bc, fc = band[c], floor[c]
        x0, y0 = np.where(bc.swap, fc[:, 2], fc[:, 1]), np.where(bc.swap, fc[:, 1], fc[:, 2])
        _, _, q_min = smallest(bc, 1, cap[c] // fc[:, 0], x0=x0, y0=y0)
        lo[c] = np.where(q_min > 0, fc[:, 0] * q_min.astype(np.int64), pref[c])
        g = np.flatnonzero(grow[c])
        if g.size:  # the most tokens under the cap, every side within the floors
            top[a + g] = _top(bc[g], gt_max[c][g], fc[g, 0], cap[c][g], x0[g], y0[g], top[a + g])
    return SizeRanges(tuple(patch), band, image, gt_max, cap, fit, top, floor, np.minimum(lo, pref), pref, top.prod(axis=1))


def _top(band: Band, gt_max, t0, cap, x0, y0, fit) -> np.ndarray:
    """The grid with the most tokens <= cap over gt in [max(t0, gt_max - 3), gt_max], sides >= floors."""
    g_K = gt_max[:, None] - np.arange(_TRIM_TRIES)
    g_K = np.where(g_K >= t0[:, None], g_K, 0)
    gx, gy, cells = largest(band.expand(), np.where(g_K > 0, cap[:, None] // np.maximum(g_K, 1), 0), x0=x0[:, None], y0=y0[:, None])
    tokens = np.where(cells > 0, g_K * cells, -1)
    k = tokens.argmax(axis=1)[:, None]
    pick = lambda a: np.take_along_axis(a, k, axis=1)[:, 0]  # noqa: E731
    gh, gw = band.hw(pick(gx), pick(gy))
    found = np.stack([pick(g_K), gh, gw], axis=1)
    return np.where((pick(tokens) > fit.prod(axis=1))[:, None], found, fit)


# ---------------------------------------------------------------------------
# Input checks: one-line ValueErrors that name the offending value
# ---------------------------------------------------------------------------
def _int(name: str, v, *, lo: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r} ({type(v).__name__})")
    if int(v) < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {int(v)}")
    return int(v)


def _ints(name: str, v, n: int, *, lo: int = 1) -> np.ndarray | int:
    """A scalar int or one int per sample (array-like of length n)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)):
        return _int(name, v, lo=lo)
    a = np.asarray(v)
    if a.ndim == 0:
        return _int(name, v, lo=lo)
    if a.shape != (n,):
        raise ValueError(f"{name} must be an int or one int per sample ({n}), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold ints, got dtype {a.dtype}")
    if n and int(a.min()) < lo:
        i = int(np.argmin(a))
        raise ValueError(f"{name}[{i}] must be >= {lo}, got {int(a[i])}")
    return a.astype(np.int64)


def _scales(v, n: int) -> float | np.ndarray:
    a = np.asarray(v)
    if a.dtype.kind not in "iuf" or a.dtype == bool or (a.ndim and a.shape != (n,)):
        raise ValueError(f"min_scale must be a float in (0, 1] or one per sample, got {v!r}")
    bad = ~((a > 0) & (a <= 1))  # NaN fails both
    if bad.any():
        shown = float(a) if a.ndim == 0 else f"{float(a.reshape(-1)[np.argmax(bad)])} at sample {int(np.argmax(bad))}"
        raise ValueError(f"min_scale must be in (0, 1], got {shown}")
    return float(a) if a.ndim == 0 else a.astype(np.float64)


def check_sizes(sizes) -> np.ndarray:
    """Native sizes as an int64 array [n, 3]; ValueError naming the first bad entry."""
    try:
        a = np.asarray(sizes)
    except ValueError as e:  # ragged
        raise ValueError(f"sizes must be (T, H, W) per sample: {e}") from None
    if a.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"sizes must be (T, H, W) per sample, got an array of shape {a.shape}")
    if a.dtype.kind not in "iu":
        flat = a.reshape(-1).tolist()
        j = next((k for k, x in enumerate(flat) if isinstance(x, bool) or not isinstance(x, int) and x != int(x)), None)
        j = next(k for k, x in enumerate(flat) if isinstance(x, bool) or not isinstance(x, int)) if j is None else j
        raise ValueError(f"sizes[{j // 3}] = {tuple(a[j // 3].tolist())}: sizes must be ints, got {type(flat[j]).__name__} {flat[j]!r}")
    a = a.astype(np.int64)
    if int(a.min()) < 1:
        i = int(np.argmin(a.min(axis=1)))
        raise ValueError(f"sizes[{i}] = {tuple(a[i].tolist())}: every size (T, H, W) must be >= 1")
    return a


def _patch(patch) -> tuple[int, int, int]:
    if not isinstance(patch, Sequence) or len(patch) != 3:
        raise ValueError(f"patch must be 3 ints (pt, ph, pw), got {patch!r}")
    return tuple(_int("patch entry", p) for p in patch)  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# plan_sized
# ---------------------------------------------------------------------------
def plan_sized(
    sizes,
    max_len: int,
    *,
    patch: tuple[int, int, int],
    max_tokens,
    max_frames=None,
    buffer: int | None = None,
    min_scale=0.9,
    budgets=None,
    time_trim: int = 3,
) -> SizedPlan:
    """Rows of samples and the size each is resized to, so that rows close full.

    sizes:      native (T, H, W) per sample, in patchify's units (pixels, or latent cells)
    max_len:    L, tokens a row holds
    patch:      (pt, ph, pw)
    max_tokens: most tokens a sample's target may hold (<= max_len); an int or one per sample
    max_frames: at most this many leading frames (None: all); an int or one per sample
    buffer:     None plans offline (by decreasing fit); k plans online: windows of k samples
                in arrival order, each largest fit first, with <= k open rows
    min_scale:  each target side (frames too) >= min_scale x the plain fit's, in (0, 1];
                a float or one per sample
    budgets:    the budget each sample's plain fit aims at (default max_tokens); where it is
                below max_tokens the sample may also grow, up to max_tokens
    time_trim:  fit_budget's trim: trailing temporal patches the plain fit may cut

    Returns a SizedPlan: `rows, targets = plan_sized(...)`; `.drops[i]` tokens sample i
    drops at random after patchify, `.kept[i]` what it keeps, `.fit_tokens[i]` its fit.
    Every target is a multiple of the patch (T may be 1 for images), no larger than native
    nor max_frames, holds <= max_tokens tokens, keeps aspect within one patch per side and
    has every side >= min_scale of the plain fit's (so kept >= the product of those sides).
    Raises ValueError (SampleError for an unsizable sample) naming the offending value.
    """
    sizes = check_sizes(sizes)
    n = len(sizes)
    max_len = _int("max_len", max_len)
    patch = _patch(patch)
    cap = _ints("max_tokens", max_tokens, n)
    if np.max(cap, initial=0) > max_len:
        i = int(np.argmax(cap)) if isinstance(cap, np.ndarray) else 0
        raise ValueError(f"max_tokens{f'[{i}]' if isinstance(cap, np.ndarray) else ''} = {int(np.max(cap))} > max_len={max_len}: such a sample could not fit a row")
    if budgets is not None:
        budgets = _ints("budgets", budgets, n)
        over = np.asarray(budgets) > np.asarray(cap)
        if over.any():
            i = int(np.argmax(np.broadcast_to(over, (n,))))
            raise ValueError(f"budgets[{i}] = {int(np.broadcast_to(budgets, (n,))[i])} > max_tokens = {int(np.broadcast_to(cap, (n,))[i])}")
    if max_frames is not None:
        max_frames = _ints("max_frames", max_frames, n)
    if buffer is not None:
        buffer = _int("buffer", buffer)
    time_trim = _int("time_trim", time_trim, lo=0)
    scale = _scales(min_scale, n)
    if n == 0:
        return SizedPlan([], [], [], [], [])

    r = size_ranges(sizes, patch=patch, max_tokens=cap, budgets=budgets, max_frames=max_frames, min_scale=scale, time_trim=time_trim)
    engine = BestFit(max_len, open_bins=buffer)
    add = engine.add_range
    window = np.arange(n) // (buffer or n)  # one window offline
    order = np.lexsort((-r.pref, window))  # by window, then largest fit first (stable)
    for i, a, b, c in zip(order.tolist(), r.lo[order].tolist(), r.pref[order].tolist(), r.hi[order].tolist()):
        add(i, a, b, c)
    rows = engine.flush()
    counts = r.pref.copy()
    if engine.shrunk:
        counts[np.fromiter(engine.shrunk.keys(), np.int64)] = np.fromiter(engine.shrunk.values(), np.int64)
    grid, frames, drops = r.targets(counts)
    targets = list(zip(frames.tolist(), (grid[:, 1] * patch[1]).tolist(), (grid[:, 2] * patch[2]).tolist()))
    return SizedPlan(rows, targets, drops.tolist(), counts.tolist(), r.pref.tolist())


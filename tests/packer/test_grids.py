"""grids.py: the aspect band searches are exact (against brute force), with and without floors."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpack.packer.grids import Band, largest, smallest


def in_band(h, w, ph, pw, gh, gw):
    return (gh - 1) * ph * w < (gw + 1) * pw * h and (gw - 1) * pw * h < (gh + 1) * ph * w


def brute(h, w, ph, pw, keep):
    return [gh * gw for gh in range(1, h // ph + 1) for gw in range(1, w // pw + 1) if in_band(h, w, ph, pw, gh, gw) and keep(gh, gw)]


@settings(max_examples=400, deadline=None)
@given(
    h=st.integers(1, 160) | st.integers(1, 6),
    w=st.integers(1, 160),
    ph=st.integers(1, 4),
    pw=st.integers(1, 4),
    p=st.integers(0, 3000),
    c=st.integers(1, 2500),
    floors=st.none() | st.tuples(st.integers(1, 20), st.integers(1, 20)),
)
def test_searches_match_brute_force(h, w, ph, pw, p, c, floors):
    fh, fw = floors or (1, 1)
    band = Band.of(np.array([h]), np.array([w]), ph, pw)
    x0, y0 = (fw, fh) if band.swap[0] else (fh, fw)
    kw = {} if floors is None else dict(x0=np.array([x0]), y0=np.array([y0]))
    for name, (gx, gy, cells), keep, pick in [
        ("largest", largest(band, np.array([p]), **kw), lambda a, b: a * b <= p, max),
        ("smallest", smallest(band, np.array([c]), np.array([p]), x0=np.array([x0]), y0=np.array([y0])), lambda a, b: c <= a * b <= p, min),
    ]:
        ref = brute(h, w, ph, pw, lambda a, b, keep=keep: keep(a, b) and a >= fh and b >= fw)
        assert cells[0] == (pick(ref) if ref else -1), name
        if ref:
            gh, gw = band.hw(gx, gy)
            assert gh[0] * gw[0] == cells[0] and in_band(h, w, ph, pw, int(gh[0]), int(gw[0])) and gh[0] >= fh and gw[0] >= fw


def test_vectorised_over_samples_and_candidates():
    rng = np.random.default_rng(0)
    h, w = rng.integers(2, 400, 500), rng.integers(2, 400, 500)
    p = rng.integers(1, 5000, (500, 3))
    band = Band.of(h, w, 2, 2)
    gx, gy, cells = largest(band.expand(), p)
    for i in range(0, 500, 37):
        for k in range(3):
            one = largest(Band.of(h[i : i + 1], w[i : i + 1], 2, 2), p[i : i + 1, k])
            assert cells[i, k] == one[2][0] and gx[i, k] == one[0][0]

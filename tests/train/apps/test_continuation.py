"""The continuation measure on ground truth: synth's own clips continue their given frames;
clips with a jump, another colour or the wrong direction do not."""

from __future__ import annotations

import random

import numpy as np
import pytest

from patchpack.train.apps.continuation import continuation, summarise_continuation
from patchpack.train.data.synth import shape_clip

pytest.importorskip("scipy")


def _clips(n=12):
    rng = random.Random(0)
    return [shape_clip(rng, 8, 32, 32)[:2] for _ in range(n)]


@pytest.mark.parametrize("given", [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]],
                         ids=["first", "forward", "backward"])
def test_true_clips_continue_their_given_frames(given):
    given = np.array(given, bool)
    results = [continuation(clip, given, cap) for clip, cap in _clips()]
    for m in ("background", "colour", "continues"):
        assert all(r[m] for r in results), (m, [r[m] for r in results])
    assert max(r["jump"] for r in results) < 0.03  # synth rounds positions to whole pixels
    assert sum(r["direction"] for r in results) >= 11  # a slow object over 5 frames moves ~3 px


def test_a_held_first_frame_counts_from_time_zero():
    for clip, cap in _clips(6):
        held = clip.copy()
        held[1] = held[0]  # image-to-video with pt = 2: frame 0 held across its patch
        r = continuation(held, np.array([1, 1, 0, 0, 0, 0, 0, 0], bool), cap, hold=True)
        assert r["continues"], r


def test_jumps_colours_and_reversed_motion_are_caught():
    given = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    jumped, recoloured, reversed_ = [], [], []
    for clip, cap in _clips():
        moved = clip.copy()
        moved[4:] = np.roll(clip[4:], (9, 11), axis=(1, 2))  # the object jumps a third of the side
        jumped.append(continuation(moved, given, cap)["continues"])
        other = clip.copy()
        other[4:] = 255 - clip[4:]  # another background and colour
        recoloured.append(continuation(other, given, cap)["colour"])
        back = clip.copy()
        back[4:] = clip[3::-1]  # the generated half runs backwards
        reversed_.append(continuation(back, given, cap)["direction"])
    assert not any(jumped) and not any(recoloured) and sum(reversed_) <= 1


def test_summary_counts_rates_and_skips_what_cannot_be_measured():
    clip, cap = _clips(1)[0]
    photo = continuation(clip, np.ones(8, bool), "a photo of a cat")
    assert all(photo[m] is None for m in ("background", "colour", "direction", "continues"))
    r = continuation(clip, np.array([1] + [0] * 7, bool), cap)
    s = summarise_continuation([("a", r), ("a", photo)])
    assert s["a"]["items"] == 2 and s["a"]["colour"]["total"] == 1 and s["a"]["colour"]["rate"] == 1.0

"""The demo's prompted row: image-to-video and extension of synthetic clips, measured for continuation.

Per caption (a real clip of it at the trained clip size, reference.reference_clip, with the
caption as the prompt; the demo passes its held-out captions), with `half` the temporal-patch
boundary nearest the middle of the clip and `longer` the longest length up to twice the clip
the run can make:

    image-to-video                 frame 0 given                     -> `frames` frames
    extend forward                 the first `half` frames given     -> `frames` frames
    extend forward, unseen length  the first `frames` given          -> `longer` frames
    extend backward                frames half .. frames-1 given last -> `frames` frames
    text only, `frames` and `longer` frames long: the baselines

All of them go through one `sample` call (one packed pass per Euler step). Each prompted
clip is measured by continuation.py; each baseline gets the same measure with the mode's
given frames pasted over it, which is what agreement the condition did not earn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import prompting
from .continuation import MEASURES, continuation, summarise_continuation
from .generate import LoadedRun, Request, sample
from .reference import reference_clip

__all__ = ["PromptedRow", "format_continuation", "prompted_requests", "prompted_row"]

MODES = ("image-to-video", "extend forward", "extend forward, unseen length", "extend backward")


@dataclass
class PromptedRow:
    reqs: list[Request]
    videos: list[np.ndarray]
    notes: list[list[str]]  # per request, for the gallery
    report: dict  # summarise_continuation: per mode, and per mode's text-only baseline


def prompted_requests(run: LoadedRun, *, side: int, frames: int, captions: Sequence[str], seed: int,
                      object_scale: tuple[float, float] = (0.3, 0.45)) -> list[Request]:
    """4 prompted requests and 2 text-only baselines per caption (a synth shape caption with
    motion); tags name the mode. object_scale: the object's side in the given clips, as synth's."""
    starts = [r.start for r in prompting.patch_frames(run, frames)][1:]  # where a later temporal patch starts
    if not starts:
        raise ValueError(f"the prompted row needs clips of at least two temporal patches, got {frames} frames")
    half = min(starts, key=lambda s: abs(s - frames / 2))  # the patch boundary nearest the middle
    longer = next(t for t in range(2 * frames, frames, -1) if prompting.patch_frames_or_none(run, t))
    out = []
    for i, caption in enumerate(captions):
        clip = reference_clip(caption, 2 * frames, side, side, seed=seed + i, object_scale=object_scale)
        req = lambda t, tag, c=caption: Request(c, t, side, side, tag=f"prompted: {tag}")  # noqa: E731
        out += [
            prompting.image(run, req(frames, MODES[0]), clip[:1]),
            prompting.extend(run, req(frames, MODES[1]), clip[:half], frames - half),
            prompting.extend(run, req(longer, MODES[2]), clip[:frames], longer - frames),
            prompting.extend(run, req(frames, MODES[3]), clip[half:frames], half, backward=True),
            req(frames, "text only"),
            req(longer, "text only, unseen length"),
        ]
    return out


def prompted_row(run: LoadedRun, *, side: int, frames: int, captions: Sequence[str], steps: int, cfg_scale: float,
                 seed: int, object_scale: tuple[float, float] = (0.3, 0.45), progress: bool = False) -> PromptedRow:
    """Generate and measure the row; `frames` and `side` should be the run's trained clip size."""
    reqs = prompted_requests(run, side=side, frames=frames, captions=captions, seed=seed, object_scale=object_scale)
    videos = sample(run, reqs, steps=steps, cfg_scale=cfg_scale, seed=seed, progress=progress)
    results, notes = [], []
    for i in range(0, len(reqs), 6):
        prompted, plain = reqs[i:i + 4], {r.frames: v for r, v in zip(reqs[i + 4:i + 6], videos[i + 4:i + 6])}
        for mode, r, v in zip(MODES, prompted, videos[i:i + 4]):
            hold = mode == "image-to-video" and run.patch[0] > 1
            res = continuation(v, r.condition.given, r.prompt, hold=hold)
            results.append((mode, res))
            pasted = plain[r.frames].copy()
            pasted[r.condition.given] = r.condition.frames[r.condition.given]
            results.append((f"{mode} (text-only baseline)", continuation(pasted, r.condition.given, r.prompt,
                                                                        hold=hold)))
            given = np.flatnonzero(r.condition.given)
            notes.append([f"given frames {given[0]}-{given[-1]}"]
                         + [f"{m} {'ok' if res[m] else 'wrong'}" for m in MEASURES if res[m] is not None]
                         + ([f"jump {res['jump']:.3f} of the side"] if res["jump"] is not None else []))
        notes += [["text only: the baseline"]] * 2
    return PromptedRow(reqs, videos, notes, summarise_continuation(results))


def format_continuation(report: dict) -> str:
    """One row per mode: each measure's correct/total and %, the median jump."""
    cell = lambda m: f"{m['correct']}/{m['total']} {100 * m['rate']:.0f}%" if m["total"] else "-"  # noqa: E731
    head = ["mode", "items", *MEASURES, "median jump"]
    rows = [[name, str(g["items"]), *(cell(g[m]) for m in MEASURES),
             "-" if g["median_jump"] is None else f"{g['median_jump']:.3f}"] for name, g in report.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(r) for r in rows])

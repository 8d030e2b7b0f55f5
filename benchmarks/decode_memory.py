"""Peak memory of every decode path against clip length: it must not grow with the clip.

    python benchmarks/decode_memory.py [--quick] [--out DIR] [--seconds 10 20 30] [--size 720x1280]

Writes one mp4 per clip length (a moving gradient, encoded frame by frame so this script
itself never holds a clip), then measures each decode path in a fresh process: peak RSS
(ru_maxrss) above the same process just before the call, and the wall time.

    full decode        decode_video with no caps: what make-shards did to learn a size
                       (the baseline, measured in the same run)
    probe_video        make-shards' size read: container headers only
    verify_video       make-shards --check decode: every frame, one at a time, none kept
    stream clip        the training stream: DataConfig defaults (8 fps, 6 s, 48 frames),
                       a random clip start (a seek)
    encode-latents     its CLI defaults: 8 fps, the first 2 s

The table gives MiB per clip length and the ratio longest / shortest per path: about
1.0 means the path does not grow with the clip; the full decode grows linearly. The
default lengths all exceed the stream's 6 s cap: below it a clip is the whole video.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from patchpack.benchmarks.common import (
    base_parser,
    machine_info,
    markdown_table,
    run_child_json,
    write_json,
)

PATHS = ("full decode", "probe_video", "verify_video", "stream clip", "encode-latents")

CHILD = r"""
import json, random, resource, sys, time
import torch
from patchpack.train.data.config import DataConfig
from patchpack.train.data.media_decode import decode_video, probe_video, verify_video
torch.set_num_threads(1)
job = json.loads(sys.stdin.read())
data = open(job["path"], "rb").read()  # a shard member arrives as bytes: they count in the baseline
d = DataConfig()
calls = {
    "full decode": lambda: decode_video(data, fps=None, max_seconds=None, max_frames=None, max_pixels=1 << 40,
                                        max_source_frames=1 << 40).frames_THWC.shape,
    "probe_video": lambda: probe_video(data).shape,
    "verify_video": lambda: verify_video(data, max_pixels=1 << 40),
    "stream clip": lambda: decode_video(data, fps=d.fps, stride=d.stride, max_seconds=d.max_seconds,
                                        max_frames=d.max_frames, max_pixels=d.max_pixels,
                                        max_source_frames=d.max_source_frames, rng=random.Random(0)).frames_THWC.shape,
    "encode-latents": lambda: decode_video(data, fps=8.0, max_seconds=2.0, max_frames=None, max_pixels=d.max_pixels,
                                           max_source_frames=d.max_source_frames).frames_THWC.shape,
}
probe_video(data)  # libraries loaded and warm before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = calls[job["call"]]()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (peak - base) / 1024, "decode_s": dt, "result": str(out)}))
"""


def write_clip(path: Path, *, seconds: float, height: int, width: int, fps: int = 24) -> int:
    """A moving gradient, encoded one frame at a time (x264 when available): returns bytes written."""
    import av
    import numpy as np

    from patchpack.train.data.media_encode import video_codec

    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream(video_codec(), rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.thread_count = 1
        if video_codec() == "libx264":
            s.options = {"crf": "28", "preset": "ultrafast"}
        for i in range(int(seconds * fps)):
            g = ((x + 4 * i) % 256).astype(np.uint8)
            frame = np.stack([g, ((y + 2 * i) % 256).astype(np.uint8), np.full_like(g, i % 256)], -1)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.stat().st_size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser(__doc__, quick_help="320x180 clips of 8, 16 and 32 s (about two minutes on 2 cores)")
    p.add_argument("--seconds", type=float, nargs="+", default=None, help="clip lengths (default 10 20 30)")
    p.add_argument("--size", default=None, help="HEIGHTxWIDTH (default 720x1280; 180x320 with --quick)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    seconds = args.seconds or ([8, 16, 32] if args.quick else [10, 20, 30])  # all past the stream's 6 s cap
    h, w = (int(v) for v in (args.size or ("180x320" if args.quick else "720x1280")).split("x"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sec in seconds:
            path = Path(tmp) / f"clip_{sec:g}s.mp4"
            t0 = time.perf_counter()
            size = write_clip(path, seconds=sec, height=h, width=w)
            print(f"clip {sec:g} s at {h}x{w}: {size / 2**20:.1f} MiB, written in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            for call in args.paths:
                r = run_child_json(CHILD, {"path": str(path), "call": call}, timeout=1800)
                results.append({"clip_s": sec, "file_mib": size / 2**20, "path": call, **r})

    rows = []
    for call in args.paths:
        mine = [r for r in results if r["path"] == call]
        first, last = mine[0]["peak_mib"], mine[-1]["peak_mib"]
        rows.append([call, *(f"{r['peak_mib']:.0f}" for r in mine), f"{max(last, 1) / max(first, 1):.2f}x",
                     f"{mine[-1]['decode_s']:.2f}"])
    table = markdown_table(["path", *(f"{s:g} s (MiB)" for s in seconds), "longest / shortest",
                            f"time at {seconds[-1]:g} s (s)"], rows)
    print(f"\n# peak RSS above the process baseline, {h}x{w} mp4 at 24 fps (ratios floor each value at 1 MiB)")
    print(f"machine: {machine_info()}\n")
    print(table)
    payload = {"benchmark": "decode_memory", "machine": machine_info(), "height": h, "width": w,
               "seconds": seconds, "results": results}
    path = write_json(args.out / "decode_memory.json", payload)
    (args.out / "decode_memory.md").write_text(table + "\n")
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()

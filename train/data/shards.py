"""Webdataset shards: a tar writer and `make_shards` for a folder plus a captions file.

A sample is a group of tar members sharing a key: `<key>.mp4` or `<key>.jpg|png`
(media bytes as given, never re-encoded) and `<key>.json` with
`{"caption": str | [str], "source": {"fps", "frames", "width", "height", "file"}}`.
Tars are written with tarfile (no webdataset needed to write), members with fixed
mtime/owner so the same input gives the same bytes; each tar appears atomically.
Captions file (the common format): `[{"file": "video0.mp4", "captions": ["...", ...]}]`
as JSON, or one such object per line (JSONL).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

from .media_decode import IMAGE_EXTS, VIDEO_EXTS, DecodeError, decode_image, decode_video
from .skips import SkipCounter


class ShardWriter:
    """Writes samples into tars of at most `max_bytes` bytes and/or `max_count` samples."""

    def __init__(self, out_dir: str | Path, *, pattern: str = "shard-{:06d}.tar",
                 max_bytes: int | None = None, max_count: int | None = None) -> None:
        if max_bytes is None and max_count is None:
            raise ValueError("ShardWriter needs max_bytes or max_count")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pattern, self.max_bytes, self.max_count = pattern, max_bytes, max_count
        self.paths: list[Path] = []
        self.samples = 0
        self.bytes = 0
        self._tar: tarfile.TarFile | None = None
        self._count = self._size = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            raise ValueError(f"key {key!r}: use letters, digits, '_' and '-' (a '.' would split the key)")
        size = sum(len(b) + 1024 for b in members.values())  # + header and padding, roughly
        full = self._tar is not None and (
            (self.max_count is not None and self._count >= self.max_count)
            or (self.max_bytes is not None and self._count > 0 and self._size + size > self.max_bytes))
        if self._tar is None or full:
            self._next()
        assert self._tar is not None
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._size += size
        self.samples += 1
        self.bytes += sum(len(b) for b in members.values())

    def _next(self) -> None:
        self._close_current()
        path = self.out_dir / self.pattern.format(len(self.paths))
        self.paths.append(path)
        self._tar = tarfile.open(path.with_suffix(".tar.tmp"), "w", format=tarfile.USTAR_FORMAT)
        self._count = self._size = 0

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            path = self.paths[-1]
            path.with_suffix(".tar.tmp").replace(path)
            self._tar = None

    def close(self) -> list[Path]:
        self._close_current()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_captions(path: str | Path) -> list[dict]:
    """JSON list or JSONL of {"file": ..., "captions": [...]} (a "caption" string is accepted too)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        entries = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: neither a JSON list nor JSONL: {e}") from None
    bad = [i for i, e in enumerate(entries) if not isinstance(e, dict) or "file" not in e]
    if bad:
        raise ValueError(f"{path}: entries {bad[:10]} have no 'file' field")
    return entries


def probe_media(data: bytes, ext: str) -> dict:
    """{"fps", "frames", "width", "height"} by decoding the file (proves it is readable)."""
    if ext in VIDEO_EXTS:
        d = decode_video(data, fps=None, max_seconds=None, max_frames=None,
                         max_pixels=1 << 40, max_source_frames=1 << 40)
        t, h, w = d.frames_THWC.shape[:3]
        return {"fps": d.source_fps, "frames": t, "width": w, "height": h}
    d = decode_image(data, max_pixels=1 << 40)
    h, w = d.frames_THWC.shape[1:3]
    return {"fps": 0.0, "frames": 1, "width": w, "height": h}


def _captions_of(entry: dict) -> list[str]:
    caps = entry.get("captions", entry.get("caption"))
    caps = [caps] if isinstance(caps, str) else list(caps or [])
    return [c.strip() for c in caps if isinstance(c, str) and c.strip()]


def make_shards(src_dir: str | Path, captions_path: str | Path, out_dir: str | Path, *,
                shard_size_mb: float = 256.0, per_caption: bool = False,
                pattern: str = "shard-{:06d}.tar", progress: bool = True) -> dict:
    """Convert `src_dir` + captions file into webdataset tars in `out_dir`.

    per_caption=True writes one (media, caption) pair per caption (media duplicated);
    False keeps all captions in one sample and the stream picks one per epoch.
    Returns {"written", "shards", "bytes", "skipped": {reason: n}} and prints it.
    """
    from tqdm import tqdm

    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be > 0, got {shard_size_mb}")
    src = Path(src_dir)
    if not src.is_dir():
        raise ValueError(f"source folder not found: {src}")
    entries = read_captions(captions_path)
    skips = SkipCounter()
    with ShardWriter(out_dir, pattern=pattern, max_bytes=int(shard_size_mb * 2**20)) as writer:
        for i, entry in enumerate(tqdm(entries, desc="make-shards", unit="file", disable=not progress)):
            name = str(entry["file"])
            ext = Path(name).suffix.lower().lstrip(".")
            captions = _captions_of(entry)
            path = src / name
            if ext not in VIDEO_EXTS + IMAGE_EXTS:
                skips.add("unsupported_type", f"{name}: only mp4, jpg and png", key=name)
                continue
            if not captions:
                skips.add("empty_caption", f"{name}: no non-empty caption", key=name)
                continue
            if not path.is_file():
                skips.add("missing_file", f"{path} does not exist", key=name)
                continue
            data = path.read_bytes()
            try:
                source = probe_media(data, ext) | {"file": name}
            except DecodeError as e:
                skips.add(f"unreadable:{e.reason}", str(e), key=name)
                continue
            ext = "jpg" if ext == "jpeg" else ext
            stem = re.sub(r"[^A-Za-z0-9_\-]", "_", Path(name).stem)[:80]
            groups = [[c] for c in captions] if per_caption else [captions]
            for j, caps in enumerate(groups):
                meta = {"caption": caps[0] if per_caption else caps, "source": source}
                key = f"{i:07d}_{j:02d}_{stem}" if per_caption else f"{i:07d}_{stem}"
                writer.write(key, {ext: data, "json": json.dumps(meta).encode()})
    summary = {"written": writer.samples, "shards": [str(p) for p in writer.paths],
               "bytes": writer.bytes, "skipped": dict(sorted(skips.counts.items()))}
    print_summary("make-shards", summary)
    return summary


def print_summary(what: str, summary: dict) -> None:
    skipped = summary["skipped"]
    reasons = ", ".join(f"{k}={v}" for k, v in skipped.items()) or "none"
    print(f"{what}: wrote {summary['written']} samples in {len(summary['shards'])} shards "
          f"({summary['bytes'] / 2**20:.1f} MiB); skipped {sum(skipped.values())} ({reasons})")

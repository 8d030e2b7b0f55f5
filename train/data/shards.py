"""Webdataset shards: a tar writer and `make_shards` for a folder plus a captions file.

A sample is a group of tar members sharing a key: `<key>.mp4` or `<key>.jpg|png`
(media bytes as given, never re-encoded) and `<key>.json` with
`{"caption": str | [str], "source": {"fps", "frames", "width", "height", "file"}}`.
Tars are written with tarfile (no webdataset needed to write), members with fixed
mtime/owner so the same input gives the same bytes.

What a reader can trust (docs/reliability.md):
  * a shard appears only when its writer finished: tars are written as `*.tar.tmp`,
    fsynced, and renamed into place when the writer closes cleanly; an error (or Ctrl-C)
    removes them, kill -9 leaves only `*.tar.tmp`, which no reader lists;
  * `shardindex.json` beside the tars (reader.py) says how many samples each holds, so a
    truncated tar is counted in samples lost;
  * an output folder that already holds shards is refused unless asked to overwrite
    (`prepare_out_dir`): old and new shards never mix;
  * every file that is not packaged is named with its reason in `skipped.jsonl`.

Captions file (the common format): `[{"file": "video0.mp4", "captions": ["...", ...]}]`
as JSON, or one such object per line (JSONL). "file" is relative to SRC; a path that
leaves SRC (`../x.jpg`, an absolute path, a symlink pointing outside) is refused unless
allow_outside=True.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path

from patchpack.train.files import fsync_dir

from .media_decode import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    DecodeError,
    decode_image,
    probe,
    verify_video,
)
from .reader import INDEX_KIND, INDEX_NAME
from .skips import SkipCounter, append_jsonl, format_counts

__all__ = ["ShardWriter", "make_shards", "read_captions", "prepare_out_dir", "print_summary", "SKIP_LIST",
           "CHECKS"]

SKIP_LIST = "skipped.jsonl"  # beside the shards: one line per file or sample not packaged, with its reason
CHECKS = ("decode", "header")  # make_shards: decode every frame (one at a time) or read headers only
TAR_FORMAT = tarfile.PAX_FORMAT  # ustar caps members at 8 GiB and names at 100 bytes; pax lifts both
MAKE_SHARDS_MAX_PIXELS = 8192 * 8192  # per frame: what make_shards decodes to check a file


# --------------------------------------------------------------------------- the writer


class ShardWriter:
    """Writes samples into tars of at most `max_bytes` bytes and/or `max_count` samples.

    Use it as a context manager: a clean exit renames every shard into place and updates
    shardindex.json; an exception removes what it wrote (no shard appears). A member is
    bytes, or a path whose file is streamed into the tar (memory does not grow with its size).
    """

    def __init__(self, out_dir: str | Path, *, pattern: str = "shard-{:06d}.tar",
                 max_bytes: int | None = None, max_count: int | None = None) -> None:
        if max_bytes is None and max_count is None:
            raise ValueError("ShardWriter needs max_bytes or max_count")
        for name, v in (("max_bytes", max_bytes), ("max_count", max_count)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {v!r}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"output {self.out_dir} exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pattern, self.max_bytes, self.max_count = pattern, max_bytes, max_count
        self.paths: list[Path] = []  # final names, in order; they exist only after close()
        self.counts: list[int] = []  # samples per shard
        self.samples = 0
        self.bytes = 0
        self.closed = False
        self._file: io.BufferedWriter | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = self._size = 0
        self._keys: set[str] = set()

    def write(self, key: str, members: Mapping[str, bytes | os.PathLike]) -> None:
        if self.closed:
            raise ValueError("this ShardWriter is closed")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            raise ValueError(f"key {key!r}: use letters, digits, '_' and '-' (a '.' would split the key)")
        sizes = {ext: _member_size(data) for ext, data in members.items()}
        size = sum(n + 1024 for n in sizes.values())  # + header and padding, roughly
        full = self._tar is not None and (
            (self.max_count is not None and self._count >= self.max_count)
            or (self.max_bytes is not None and self._count > 0 and self._size + size > self.max_bytes))
        if self._tar is None or full:
            self._next()
        if key in self._keys:  # readers group members by key: a repeat would merge two samples
            raise ValueError(f"key {key!r} is already in {self.paths[-1].name}")
        assert self._tar is not None
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = sizes[ext], 0, 0o644, "", ""
            if isinstance(data, (bytes, bytearray, memoryview)):
                self._tar.addfile(info, io.BytesIO(bytes(data)))
            else:
                with open(data, "rb") as f:  # streamed: tarfile copies exactly info.size bytes
                    self._tar.addfile(info, f)
        self._keys.add(key)
        self._count += 1
        self._size += size
        self.samples += 1
        self.bytes += sum(sizes.values())

    def _next(self) -> None:
        self._finish_current()
        path = self.out_dir / self.pattern.format(len(self.paths))
        if path.exists():
            raise FileExistsError(f"{path} exists; a writer never replaces a shard (see prepare_out_dir)")
        self.paths.append(path)
        self._file = open(_tmp(path), "wb")  # noqa: SIM115 - closed in _finish_current
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=TAR_FORMAT)
        self._count = self._size = 0
        self._keys = set()

    def _finish_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()  # the end-of-archive blocks
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.counts.append(self._count)
        self._tar = self._file = None

    def close(self) -> list[Path]:
        """Finish the last tar, rename every shard into place and update the shard index."""
        if self.closed:
            return self.paths
        self._finish_current()
        for path in self.paths:
            os.replace(_tmp(path), path)
        self.closed = True
        if self.paths:
            fsync_dir(self.out_dir)
            self._write_index()
        return self.paths

    def abort(self) -> None:
        """Remove everything this writer wrote: no shard of it appears."""
        if self._tar is not None:
            try:
                self._tar.close()
            except Exception:  # the file is removed below, whatever state it is in
                pass
            self._file.close()
            self._tar = self._file = None
        for path in self.paths:
            _tmp(path).unlink(missing_ok=True)
        self.closed = True

    def _write_index(self) -> None:
        path = self.out_dir / INDEX_NAME
        try:
            old = json.loads(path.read_text()).get("shardlist", [])
        except (OSError, ValueError, AttributeError):
            old = []
        mine = {p.name for p in self.paths}
        entries = [e for e in old if isinstance(e, dict) and e.get("url") not in mine]
        entries += [{"url": p.name, "nsamples": n, "filesize": p.stat().st_size} for p, n in zip(self.paths, self.counts)]
        entries.sort(key=lambda e: str(e.get("url")))
        tmp = path.with_name(f"{INDEX_NAME}.tmp")
        tmp.write_text(json.dumps({"__kind__": INDEX_KIND, "wids_version": 1, "shardlist": entries}, indent=1) + "\n")
        os.replace(tmp, path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _member_size(data) -> int:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    return os.stat(data).st_size


def prepare_out_dir(out_dir: str | Path, *, overwrite: bool) -> Path:
    """Make `out_dir` ready for a new set of shards: refuse one that already holds shards
    (ValueError) unless `overwrite`, which deletes its *.tar, the shard index and the skip
    list first. Leftover *.tar.tmp (a writer killed mid-way) are always removed."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tar.tmp"):
        stale.unlink(missing_ok=True)
    old = sorted(out.glob("*.tar"))
    if old and not overwrite:
        raise ValueError(f"output {out} already holds {len(old)} shards ({old[0].name}, ...): training would "
                         "mix them with the new ones; pass --overwrite (overwrite=True) to replace them, "
                         "or choose an empty folder")
    for path in [*old, out / INDEX_NAME, out / SKIP_LIST]:
        path.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- captions


def read_captions(path: str | Path) -> list[dict]:
    """JSON list or JSONL of {"file": ..., "captions": [...]} (a "caption" string is accepted too)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"captions file {p} is a directory; expected a JSON or JSONL file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"captions file {p} is not UTF-8 text: {e}") from None
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


def _captions_of(entry: dict) -> list[str]:
    caps = entry.get("captions", entry.get("caption"))
    caps = [caps] if isinstance(caps, str) else list(caps) if isinstance(caps, (list, tuple)) else []
    return [c.strip() for c in caps if isinstance(c, str) and c.strip()]


# --------------------------------------------------------------------------- make_shards


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _inside(src: Path, name: object, *, allow_outside: bool) -> Path:
    """The path an entry names, or _Refused when it is not a relative path inside SRC."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise _Refused("bad_entry", f"'file' must be a non-empty path string, got {name!r}")
    rel = Path(name)
    path = src / rel
    if not allow_outside:
        if rel.is_absolute() or ".." in rel.parts:
            raise _Refused("outside_src", f"{name}: absolute or '..' paths may name files outside SRC")
        try:
            path.resolve().relative_to(src.resolve())
        except ValueError:
            raise _Refused("outside_src", f"{name}: a symlink that resolves to {path.resolve()}, outside SRC") from None
    return path


def _regular_file(path: Path) -> None:
    """_Refused unless `path` is a regular file this process can read."""
    try:
        mode = path.stat().st_mode  # follows symlinks
    except OSError as e:
        raise _Refused("missing_file", f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):  # a FIFO would block the read forever, a device never end
        raise _Refused("not_a_file", f"{path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise _Refused("unreadable_file", f"{path}: {e.strerror or e}") from None


def _check_media(path: Path, ext: str, check: str, max_pixels: int) -> dict:
    """{"fps", "frames", "width", "height"} from the headers; check="decode" also decodes every
    frame (one at a time, none kept), so a file that cannot be read to its end is refused."""
    info = probe(path, ext)
    if info.width * info.height > max_pixels:
        raise DecodeError("too_large", f"{info.width}x{info.height} > max_pixels={max_pixels}")
    frames = info.frames
    if check == "decode":
        if ext in VIDEO_EXTS:
            frames = verify_video(path, max_pixels=max_pixels)
        else:
            decode_image(path, max_pixels=max_pixels)
    return {"fps": info.fps, "frames": frames, "width": info.width, "height": info.height}


def _uncaptioned(src: Path, named: set[str]) -> list[Path]:
    """Media files under SRC (symlinked folders not followed) that no captions entry names, as
    written or once resolved."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.suffix.lower().lstrip(".") in VIDEO_EXTS + IMAGE_EXTS \
                    and os.path.normpath(p) not in named and str(p.resolve()) not in named:
                found.append(p)
    return found


def make_shards(src_dir: str | Path, captions_path: str | Path, out_dir: str | Path, *,
                shard_size_mb: float = 256.0, per_caption: bool = False, pattern: str = "shard-{:06d}.tar",
                overwrite: bool = False, check: str = "decode", max_pixels: int = MAKE_SHARDS_MAX_PIXELS,
                allow_outside: bool = False, progress: bool = True) -> dict:
    """Convert `src_dir` + captions file into webdataset tars in `out_dir`.

    per_caption=True writes one (media, caption) pair per caption (media duplicated);
    False keeps all captions in one sample and the stream picks one per epoch.
    overwrite: replace the shards already in out_dir (refused otherwise). check: "decode"
    reads every frame of every file (one frame in memory at a time), "header" only the
    sizes. max_pixels: larger files are skipped. allow_outside: package files outside SRC.
    Every entry not packaged, and every media file under SRC that no entry names, is a
    line of out_dir/skipped.jsonl. Returns {"written", "shards", "bytes", "skipped":
    {reason: n}, "uncaptioned", "skip_list"} and prints a short summary.
    """
    from tqdm import tqdm

    if isinstance(shard_size_mb, bool) or not isinstance(shard_size_mb, (int, float)) \
            or not math.isfinite(shard_size_mb) or shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be a finite number > 0, got {shard_size_mb}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be an integer >= 1, got {max_pixels!r}")
    src = Path(src_dir)
    if not src.is_dir():
        raise ValueError(f"source folder not found: {src}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory")
    entries = read_captions(captions_path)
    out = prepare_out_dir(out_dir, overwrite=overwrite)
    skip_list = out / SKIP_LIST
    skips = SkipCounter(log_path=skip_list)
    named: set[str] = set()  # every path an entry names, as written and resolved
    with ShardWriter(out, pattern=pattern, max_bytes=max(int(shard_size_mb * 2**20), 1)) as writer:
        for i, entry in enumerate(tqdm(entries, desc="make-shards", unit="file", disable=not progress)):
            name = entry["file"]
            if isinstance(name, str) and "\x00" not in name:
                named.update((os.path.normpath(src / name), str((src / name).resolve())))
            try:
                path = _inside(src, name, allow_outside=allow_outside)
                ext = path.suffix.lower().lstrip(".")
                if ext not in VIDEO_EXTS + IMAGE_EXTS:
                    raise _Refused("unsupported_type", f"{name}: only mp4, jpg and png")
                captions = _captions_of(entry)
                if not captions:
                    raise _Refused("empty_caption", f"{name}: no non-empty caption")
                _regular_file(path)
                source = _check_media(path, ext, check, max_pixels) | {"file": name}
            except _Refused as e:
                skips.add(e.reason, e.message, key=str(name))
                continue
            except DecodeError as e:
                skips.add(f"unreadable:{e.reason}", e.message, key=str(name))
                continue
            ext = "jpg" if ext == "jpeg" else ext
            stem = re.sub(r"[^A-Za-z0-9_\-]", "_", Path(name).stem)[:80]
            groups = [[c] for c in captions] if per_caption else [captions]
            for j, caps in enumerate(groups):
                meta = {"caption": caps[0] if per_caption else caps, "source": source}
                key = f"{i:07d}_{j:02d}_{stem}" if per_caption else f"{i:07d}_{stem}"
                writer.write(key, {ext: path, "json": json.dumps(meta).encode()})
    uncaptioned = _uncaptioned(src, named)
    for p in uncaptioned:
        append_jsonl(skip_list, {"key": str(p.relative_to(src)), "reason": "uncaptioned",
                                 "message": "a media file under SRC that no captions entry names", "count": 1})
    summary = {"written": writer.samples, "shards": [str(p) for p in writer.paths], "bytes": writer.bytes,
               "skipped": dict(sorted(skips.counts.items())), "uncaptioned": len(uncaptioned),
               "skip_list": str(skip_list) if skips.total or uncaptioned else None}
    print_summary("make-shards", summary)
    return summary


def print_summary(what: str, summary: dict) -> None:
    """Two short lines at most: what was written, what was not (by reason) and where the list is."""
    skipped = summary["skipped"]
    print(f"{what}: wrote {summary['written']} samples in {len(summary['shards'])} shards "
          f"({summary['bytes'] / 2**20:.1f} MiB); skipped {sum(skipped.values())} ({format_counts(skipped)})")
    extra = []
    if summary.get("uncaptioned"):
        extra.append(f"{summary['uncaptioned']} media files under SRC have no caption entry")
    if summary.get("skip_list"):
        extra.append(f"every one is listed in {summary['skip_list']}")
    if extra:
        print(f"{what}: " + "; ".join(extra))

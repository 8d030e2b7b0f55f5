"""Shard lists and tar reading: which shards a reader gets, and the records inside one.

Tar reading and URL opening are webdataset's (`tar_file_iterator`, `group_by_keys`,
`gopen`, brace expansion); the order of shards and samples is ours, because
`webdataset.WebDataset` cannot save and restore its position.

Shard index. Our writers (shards.ShardWriter) leave `shardindex.json` beside the tars,
in the format of webdataset's wids ({"__kind__": "wids-shard-index-v1", "shardlist":
[{"url", "nsamples", "filesize"}]}), so a reader knows how many samples a shard holds
and can count the samples a truncated or corrupt tar lost, not just the tar.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["expand_shards", "split_shards", "read_shard", "derive_seed", "INDEX_NAME", "read_index",
           "expected_samples", "shard_loss", "READ_ERRORS"]

# what reading a bad tar raises (webdataset's grouping raises ValueError on a repeated member)
READ_ERRORS = (tarfile.TarError, OSError, ValueError)

INDEX_NAME = "shardindex.json"
INDEX_KIND = "wids-shard-index-v1"


# --------------------------------------------------------------------------- shard lists


def expand_shards(spec: str | list[str], *, allow_pipe: bool = False) -> list[str]:
    """Paths, directories, brace patterns and file: URLs -> a sorted list of shard URLs."""
    import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for s in specs:
        for url in braceexpand.braceexpand(s):
            if url.startswith("pipe:") and not allow_pipe:
                raise ValueError(f"shard {url!r} is a pipe: URL, which runs a shell command; "
                                 "set allow_pipe=True in DataConfig if you mean it")
            path = Path(url[5:] if url.startswith("file:") else url)
            if "://" not in url and not url.startswith("pipe:") and path.is_dir():
                urls.extend(str(p) for p in sorted(path.glob("*.tar")))
            else:
                urls.append(url)
    if not urls:
        raise ValueError(f"no shards found for {spec!r}")
    return urls


def split_shards(urls: list[str], *, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
                 worker: int, num_workers: int) -> list[str]:
    """This (rank, worker)'s shards for one epoch: the order is shuffled identically on all
    ranks, then dealt out by node, then by worker, so each shard is read once per epoch."""
    order = list(urls)
    if shuffle:
        random.Random(derive_seed(seed, "shards", epoch)).shuffle(order)
    return order[rank::world_size][worker::num_workers]


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, the same in every process (sha256, not hash())."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def _open(url: str, allow_pipe: bool):
    from webdataset.gopen import gopen, rewrite_url

    url = rewrite_url(url)
    if url.startswith("pipe:") and not allow_pipe:  # GOPEN_REWRITE can make one
        raise ValueError(f"shard {url!r} resolves to a pipe: URL; set allow_pipe=True to run it")
    local = _local_path(url)
    if local is not None:
        _check_local(local)
    return gopen(url, "rb")


def _check_local(path: Path) -> None:
    if path.exists() and not path.is_file():  # a FIFO would block the open forever
        raise ValueError(f"shard {str(path)!r} is not a regular file")


_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, never part of a sample
_TAIL = 1 << 20  # bytes checked after the end of a tar, at each side of what follows it


@contextmanager
def _members(url: str, allow_pipe: bool):
    """{"fname", "data"} of each regular member. A local .tar is read with tarfile directly,
    so that a corrupt header, which tarfile takes for the end of the archive and stops at
    quietly, is caught: data after the point it stopped raises ReadError. Other URLs go
    through webdataset's stream reader."""
    from webdataset.gopen import rewrite_url

    local = _local_path(rewrite_url(url))
    if local is None or local.suffix != ".tar":
        from webdataset.tariterators import tar_file_iterator

        with _open(url, allow_pipe) as stream:
            yield tar_file_iterator(stream)
        return
    _check_local(local)
    yield _local_members(local)


def _local_members(path: Path) -> Iterator[dict]:
    with tarfile.open(path, mode="r:") as tf:
        for info in tf:
            if info.isreg() and not _META.match(info.name):
                yield {"fname": info.name, "data": tf.extractfile(info).read()}
            tf.members = []  # as webdataset does: no TarInfo list growing with the shard
        end = tf.offset  # where tarfile saw the end: zero blocks, or a header it could not parse
    size = path.stat().st_size
    with open(path, "rb") as f:  # a valid tar ends in zero blocks; look at the head and tail of the rest
        for start in sorted({end, max(end, size - _TAIL)}):  # (not all of it: a huge zero tail costs no read)
            f.seek(start)
            if f.read(_TAIL).strip(b"\0"):
                raise tarfile.ReadError(f"a bad tar header at byte {end}: {size - end} bytes after it were "
                                        "never read")


def _local_path(url: str) -> Path | None:
    if "://" in url or url.startswith("pipe:"):
        return None
    return Path(url[5:] if url.startswith("file:") else url)


def read_shard(url: str, allow_pipe: bool) -> Iterator[dict]:
    """The records of one tar shard in order: {member extension: bytes, "__key__", "__url__"}.

    Members are grouped by key as webdataset's group_by_keys does (the key is the name up to
    its first dot), with one difference: when the tar breaks, the record being assembled is
    still yielded before the error is raised. A complete sample just before a cut is then
    used, and a partial one is counted as a skip by what it lacks, instead of vanishing."""
    from webdataset.tariterators import base_plus_ext

    with _members(url, allow_pipe) as members:
        current: dict | None = None
        try:
            for f in members:
                key, ext = base_plus_ext(f["fname"])
                if key is None:  # a member without an extension belongs to no sample
                    continue
                ext = ext.lower()
                if current is not None and key != current["__key__"]:
                    done, current = current, None
                    yield done
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if ext in current:
                    raise ValueError(f"{f['fname']}: duplicate file name in tar file {url}")
                current[ext] = f["data"]
        except READ_ERRORS:
            if current is not None:
                done, current = current, None
                yield done
            raise
        if current is not None:
            yield current


# --------------------------------------------------------------------------- shard index


def read_index(directory: str | Path) -> dict[str, dict]:
    """{shard file name: {"nsamples", "filesize"}} from `directory`/shardindex.json; {} when
    there is none or it cannot be read (the index only sharpens skip counts)."""
    path = Path(directory) / INDEX_NAME
    try:
        data = json.loads(path.read_text())
        return {Path(e["url"]).name: {"nsamples": int(e["nsamples"]), "filesize": int(e.get("filesize", -1))}
                for e in data["shardlist"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def expected_samples(url: str, cache: dict[str, dict]) -> int | None:
    """Samples the index beside a local shard says it holds; None for remote URLs or no index.
    `cache` maps a directory to its index, so each index is read once per reader."""
    if "://" in url or url.startswith("pipe:"):
        return None
    path = Path(url[5:] if url.startswith("file:") else url)
    folder = str(path.parent)
    if folder not in cache:
        cache[folder] = read_index(folder)
    entry = cache[folder].get(path.name)
    return None if entry is None else entry["nsamples"]


def shard_loss(url: str, read: int, error: str | None, cache: dict[str, dict]) -> tuple[str, int, str] | None:
    """(reason, samples lost, message) after reading `read` records of a shard, or None if
    nothing was lost. With an index, a short or broken tar loses expected - read samples
    ("truncated_shard"); without one, an error counts the shard once ("bad_shard")."""
    expected = expected_samples(url, cache)
    if expected is not None and expected > read:
        return "truncated_shard", expected - read, f"{url}: {read} of {expected} samples readable ({error or 'the tar ends early'})"
    if error is not None and expected is None:
        return "bad_shard", 1, f"{error} (no {INDEX_NAME} beside it: samples lost unknown)"
    return None

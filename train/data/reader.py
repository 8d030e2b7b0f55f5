"""Shard lists and tar reading: which shards a reader gets, and the records inside one.

Tar reading and URL opening are webdataset's (`tar_file_iterator`, `group_by_keys`,
`gopen`, brace expansion); the order of shards and samples is ours, because
`webdataset.WebDataset` cannot save and restore its position.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

__all__ = ["expand_shards", "split_shards", "read_shard", "derive_seed"]


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

    if rewrite_url(url).startswith("pipe:") and not allow_pipe:  # GOPEN_REWRITE can make one
        raise ValueError(f"shard {url!r} resolves to a pipe: URL; set allow_pipe=True to run it")
    return gopen(url, "rb")


def read_shard(url: str, allow_pipe: bool) -> Iterator[dict]:
    """The records of one tar shard in order: {member extension: bytes, "__key__", "__url__"}."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with _open(url, allow_pipe) as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)

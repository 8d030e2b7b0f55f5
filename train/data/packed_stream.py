"""Streaming webdataset shards into ready PackedBatches, resumably.

    shards --(per-epoch seeded shuffle, split_by_node, split_by_worker)--> tar reader
      --> shuffle buffer of raw (still encoded) samples
      --> caption pick + decode at native size (PyAV / PIL) --> float [C, T, H, W] in [-1, 1]
      --> packer.prepare_sample (budget, patchify, drop) --> packer.StreamPacker --> PackedBatch

Shard lists and tar reading live in reader.py, the decoding of one record in records.py.

The shuffle buffer sits before decoding (webdataset's usual `.shuffle().decode()`
order): the sample order is the same as shuffling decoded videos, but the buffer
holds compressed bytes, so it is cheap to keep and to checkpoint.

Latent shards (latent_shards.py) hold `<key>.latent.safetensors` instead of media: the
"decode" step then loads the VAE latent [C', T', H', W'] and the packer patchifies it
exactly as it would pixels (it never knows the difference). `VideoStream` is the same
reading and decoding without the packer, one video at a time (VAE training, encoding).

Bad samples are counted by reason (skips.py) and the stream goes on; `skips` gives
the counts, including the packer's drops as "packer:<reason>". With `skip_log`, every
skipped sample is also a line of a JSON-lines file. A truncated or corrupt tar counts
the samples it lost when the shard index (reader.py) says how many it held. A reader
that skips `data.max_skips_in_a_row` samples in a row, none usable, raises NoUsableData
with the counts by reason instead of spinning forever. Stop signals (patchpack.train.stop)
are honoured between records, where the state is whole: a checkpoint taken after the
StopRequested resumes exactly.

Resume. With num_workers=0, `state_dict()` taken between batches holds the epoch,
the shard cursor and the samples read from the current shard, the shuffle buffer's
bytes, every RNG state and the StreamPacker state: a stream restored from it yields
bitwise the same next batches. With DataLoader workers each batch comes back with its
worker's light position (`_Stream.info()`), and `loader()` records it; a resume
restarts every worker at its position with empty shuffle and packer buffers, and
rotates worker ids so the round-robin order continues. Samples that sat in those
buffers at save time are not seen again that epoch (at most shuffle_buffer + the
packer's buffer per worker); everything else is read exactly once.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from patchpack.train.stop import check as check_stop
from patchpack.train.stop import interruptible

from .config import DataConfig
from .media_decode import DecodeError
from .reader import READ_ERRORS, derive_seed, expand_shards, read_shard, shard_loss, split_shards
from .records import RecordDecoder, record_from_state, record_key, record_to_state
from .skips import NoUsableData, SkipCounter, format_counts, merge_counts

log = logging.getLogger("patchpack.train.data")

# --------------------------------------------------------------------------- one worker's stream


class _Stream:
    """All mutable state of one (rank, worker) stream; the generators below advance it."""

    def __init__(self, data: DataConfig, packer_cfg, urls: list[str], *, rank: int, world_size: int,
                 worker: int, num_workers: int, position: Mapping | None = None,
                 skips: Mapping[str, int] | None = None, skip_log: str | os.PathLike | None = None) -> None:
        from patchpack.packer import StreamPacker

        self.data, self.packer_cfg, self.urls = data, packer_cfg, urls
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        pos = dict(position or {"epoch": 0, "cursor": 0, "offset": 0})
        self.epoch, self.cursor, self.offset = int(pos["epoch"]), int(pos["cursor"]), int(pos["offset"])
        base = (data.seed, rank, worker, self.epoch, self.cursor, self.offset)
        self.shuffle_rng = random.Random(derive_seed(*base, "buffer"))
        self.sample_rng = random.Random(derive_seed(*base, "sample"))  # caption pick, clip start
        self.decoder = RecordDecoder(data, self.sample_rng)
        self.gen = torch.Generator().manual_seed(derive_seed(*base, "packer") % 2**63)
        self.packer = None  # a VideoStream (no packer_cfg) yields decoded videos and never packs
        if packer_cfg is not None:
            self.packer = StreamPacker(packer_cfg, seed=derive_seed(*base, "pack") % 2**31,
                                       decode=self.decoder.decode_planned)
        # Sizes are planned from headers whenever every sample may be sized to fit a row. A
        # budget over max_len under oversize="error" | "drop" | "split_time" asks to refuse,
        # drop or cut what does not fit, which needs the sample's own size: prepared whole.
        self.plan_sizes = packer_cfg is not None and packer_cfg.token_budget <= packer_cfg.max_len
        self.buffer: list[dict] = []
        self.skip_log = skip_log
        self.skips = SkipCounter(skips, log_path=skip_log, where={"rank": rank, "worker": worker})
        self.in_a_row = 0  # samples skipped since the last usable one
        self.refused = False  # the consumer of videos() refused the last sample (refuse())
        self.index: dict[str, dict] = {}  # directory -> its shard index, read once
        self.batches = 0

    # -- the pipeline, outermost last

    def _records(self) -> Iterator[dict]:
        d = self.data
        while d.epochs is None or self.epoch < d.epochs:
            got_any, fresh = False, self.cursor == 0 and self.offset == 0
            mine = split_shards(self.urls, epoch=self.epoch, seed=d.seed, shuffle=d.shuffle_shards,
                                rank=self.rank, world_size=self.world_size,
                                worker=self.worker, num_workers=self.num_workers)
            while self.cursor < len(mine):
                url, skip = mine[self.cursor], self.offset
                read, error = 0, None
                try:
                    for i, rec in enumerate(read_shard(url, d.allow_pipe)):
                        read = i + 1
                        if i < skip:
                            continue  # resuming inside this shard: read, not decoded
                        check_stop()  # a safe point: every record before this one is accounted for
                        self.offset += 1
                        got_any = True
                        yield rec
                except READ_ERRORS as e:
                    error = f"{type(e).__name__}: {e}"
                self._account_shard(url, read, error)
                self.cursor, self.offset = self.cursor + 1, 0
            self.epoch, self.cursor = self.epoch + 1, 0
            if fresh and not got_any and d.epochs is None:  # would spin forever
                raise ValueError(f"rank {self.rank} worker {self.worker}: a whole epoch of {len(mine)} "
                                 "shards gave no sample")

    def _shuffled(self) -> Iterator[dict]:
        size = self.data.shuffle_buffer
        for rec in self._records():
            if size <= 1:
                yield rec
                continue
            self.buffer.append(rec)
            if len(self.buffer) >= size:
                yield self._pop()
        while self.buffer:
            yield self._pop()

    def _pop(self) -> dict:
        i = self.shuffle_rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    def _samples(self) -> Iterator:
        from patchpack.packer import SampleError, prepare_sample

        for rec in self._shuffled():
            key = record_key(rec)
            try:
                if self.plan_sizes:  # native size from the headers; decoded once its row closes
                    sample = self.decoder.probe(rec)
                else:
                    video_CTHW, meta = self.decoder.decode(rec)
                    sample = prepare_sample(video_CTHW, config=self.packer_cfg, generator=self.gen, key=key, meta=meta)
            except (DecodeError, SampleError) as e:
                self._skip(e.reason, e.message, key)
                continue
            dropped = self._packer_dropped()
            yield sample
            if self._packer_dropped() > dropped:  # the packer refused it (and counted why)
                self._in_a_row(1)
            else:
                self.in_a_row = 0

    def videos(self) -> Iterator[tuple[str, torch.Tensor, dict]]:
        """(key, float [C, T, H, W], meta) per readable sample, skips counted as in _samples.
        A consumer that cannot use a sample calls `refuse` before asking for the next one."""
        for rec in self._shuffled():
            key = record_key(rec)
            try:
                video_CTHW, meta = self.decoder.decode(rec)
            except DecodeError as e:
                self._skip(e.reason, e.message, key)
                continue
            self.refused = False
            yield key, video_CTHW, meta
            if not self.refused:
                self.in_a_row = 0

    def refuse(self, key: str, reason: str, message: str) -> None:
        """Count the sample videos() just gave as skipped: its consumer could not use it."""
        self.refused = True
        self._skip(reason, message, key)

    # -- skips

    def _skip(self, reason: str, message: str, key: str) -> None:
        self.skips.add(reason, message, key=key)
        self._in_a_row(1)

    def _in_a_row(self, n: int) -> None:
        self.in_a_row += n
        limit = self.data.max_skips_in_a_row
        if self.in_a_row >= limit:
            counts = self.skip_counts()
            where = f" (all in {self.skip_log})" if self.skip_log is not None else ""
            raise NoUsableData(
                f"{self.in_a_row} samples in a row were skipped and none was usable (rank {self.rank}, "
                f"worker {self.worker}; data.max_skips_in_a_row={limit}); skipped so far: "
                f"{format_counts(counts)}{where}", counts)

    def _account_shard(self, url: str, read: int, error: str | None) -> None:
        """After a shard: count the samples a truncated or corrupt tar lost (reader.shard_loss)."""
        loss = shard_loss(url, read, error, self.index)
        if loss is not None:
            reason, lost, message = loss
            self.skips.add(reason, message, key=url, count=lost)
        elif error is not None:
            log.warning("shard %s: %s after all %d samples its index lists", url, error, read)

    def _packer_dropped(self) -> int:
        dropped = _get(_get(self.packer, "stats", {}), "dropped_by_reason", {}) or {}
        return sum(int(v) for v in dict(dropped).values())

    def __iter__(self):
        # a finite stream closes the packer's open rows at the end; an endless one never ends
        for batch in self.packer.pack(self._samples(), flush=self.data.epochs is not None):
            self.batches += 1
            yield batch

    def info(self) -> dict:
        """Where this worker stands after its latest batch (what a worker resume needs)."""
        return {"rank": self.rank, "worker": self.worker, "batches": self.batches,
                "position": self.position(), "skips": self.skip_counts()}

    # -- bookkeeping

    def position(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "offset": self.offset}

    def skip_counts(self) -> dict[str, int]:
        dropped = _get(_get(self.packer, "stats", {}), "dropped_by_reason", {}) or {}
        return merge_counts([self.skips.counts, {f"packer:{k}": v for k, v in dict(dropped).items()}])

    def state_dict(self) -> dict:
        return {
            "position": self.position(),
            "buffer": [record_to_state(r) for r in self.buffer],
            "shuffle_rng": self.shuffle_rng.getstate(),
            "sample_rng": self.sample_rng.getstate(),
            "generator": self.gen.get_state(),
            "packer": self.packer.state_dict() if self.packer is not None else None,
            "skips": dict(self.skips.counts),
            "in_a_row": self.in_a_row,
            "batches": self.batches,
        }

    def load_state_dict(self, sd: Mapping) -> None:
        self.epoch, self.cursor, self.offset = (int(sd["position"][k]) for k in ("epoch", "cursor", "offset"))
        self.buffer = [record_from_state(r) for r in sd["buffer"]]
        self.shuffle_rng.setstate(_rng_state(sd["shuffle_rng"]))
        self.sample_rng.setstate(_rng_state(sd["sample_rng"]))
        self.gen.set_state(sd["generator"])
        if self.packer is not None:
            self.packer.load_state_dict(sd["packer"])
        self.skips = SkipCounter(sd["skips"], log_path=self.skip_log, where=self.skips.where)
        self.in_a_row = int(sd.get("in_a_row", 0))
        self.batches = int(sd["batches"])


def _get(obj, name: str, default):
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def _rng_state(s) -> tuple:
    version, internal, gauss = s
    return int(version), tuple(int(x) for x in internal), gauss


# --------------------------------------------------------------------------- the dataset


def _identity(x):
    return x


class PackedStream(IterableDataset):
    """An IterableDataset of PackedBatches: `DataLoader(ds, batch_size=None)` or `ds.loader()`.

    rank/world_size default to torch.distributed's (or 0/1); worker/num_workers to the
    DataLoader worker's (or 0/1). Passing them explicitly simulates a split in tests.
    Each batch has `meta[i]["caption"]` (one caption picked per read, seeded).
    skip_log: a JSON-lines file every reader appends each skipped sample to (e.g. a run's
    skipped.jsonl); None keeps only the counts.
    """

    def __init__(self, data: DataConfig, packer, *, rank: int | None = None, world_size: int | None = None,
                 worker: int | None = None, num_workers: int | None = None,
                 skip_log: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.data, self.packer_cfg = data, packer
        self.skip_log = None if skip_log is None else str(skip_log)
        self.urls = expand_shards(data.shards, allow_pipe=data.allow_pipe)
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        self._worker_override = (worker, num_workers)
        self._live: _Stream | None = None
        self._pending: dict | None = None
        self._observed: dict[int, dict] = {}  # worker -> its info() after the last batch loader() saw
        self._observed_batches = 0
        self._loader_workers = 0
        self._with_info = False  # set on the copy loader() hands to DataLoader workers

    def _worker(self) -> tuple[int, int]:
        w, n = self._worker_override
        if w is not None and n is not None:
            return w, n
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def __iter__(self) -> Iterator:
        physical, nw = self._worker()
        self._check_readers(nw)
        pending = self._pending
        logical, position, exact, skips = physical, None, None, None
        if pending is not None and pending.get("mode") == "exact":
            if nw != 1:
                raise ValueError("this state was saved with num_workers=0; resume it with num_workers=0")
            exact = pending["stream"]
        elif pending is not None and pending.get("mode") == "workers":
            if int(pending["num_workers"]) != nw:
                raise ValueError(f"state saved with num_workers={pending['num_workers']}, resuming with {nw}")
            logical = (physical + int(pending["batches"])) % nw  # continue the round robin
            position = pending["workers"].get(str(logical))
            skips = pending["skips"].get(str(logical))
        stream = _Stream(self.data, self.packer_cfg, self.urls, rank=self.rank, world_size=self.world_size,
                         worker=logical, num_workers=nw, position=position, skips=skips, skip_log=self.skip_log)
        if exact is not None:
            stream.load_state_dict(exact)
        if get_worker_info() is None:
            self._live = stream
        if self._with_info:  # a worker's batch travels with its position, back to loader()
            return ((batch, stream.info()) for batch in stream)
        return iter(stream)

    def loader(self, *, num_workers: int = 0, with_info: bool = False, **dataloader_kwargs) -> Iterator:
        """Iterate batches, in-process (num_workers=0) or from DataLoader workers, keeping the
        bookkeeping `skips` and `state_dict` need.

        with_info: yield (batch, info) pairs, info being {"rank", "worker", "batches",
        "position", "skips"} of the stream that made the batch, after it.
        """
        if num_workers == 0:
            for batch in self:
                yield (batch, self._live.info()) if with_info else batch
            return
        self._check_readers(num_workers)  # here, not in a worker: one clean error in this process
        self._loader_workers = num_workers
        pending = self._pending if (self._pending or {}).get("mode") == "workers" else None
        self._observed_batches = int(pending["batches"]) if pending else 0
        self._observed = {int(k): {"position": v, "skips": pending["skips"].get(k, {})}
                          for k, v in pending["workers"].items()} if pending else {}
        shipped = copy.copy(self)
        shipped._with_info = True
        dl = DataLoader(shipped, batch_size=None, num_workers=num_workers, collate_fn=_identity, **dataloader_kwargs)
        it = iter(dl)
        while True:
            with interruptible():  # waiting on workers holds no state here: a signal may stop it at once
                item = next(it, None)
            if item is None:
                return
            batch, info = item
            self._observed[int(info["worker"])] = info
            self._observed_batches += 1
            yield (batch, info) if with_info else batch

    def _check_readers(self, num_workers: int) -> None:
        total = self.world_size * num_workers
        if len(self.urls) < total:
            raise ValueError(f"{len(self.urls)} shards cannot feed world_size={self.world_size} x "
                             f"num_workers={num_workers} = {total} readers; write more, smaller shards "
                             "or lower loop.num_workers")

    @property
    def skips(self) -> dict[str, int]:
        """reason -> count, merged over this process's stream and every worker seen by loader()."""
        parts = [o.get("skips", {}) for o in self._observed.values()]
        if self._live is not None:
            parts.append(self._live.skip_counts())
        return merge_counts(parts)

    def state_dict(self) -> dict:
        if self._loader_workers and self._observed:
            return {"mode": "workers", "num_workers": self._loader_workers, "batches": self._observed_batches,
                    "workers": {str(w): dict(o["position"]) for w, o in self._observed.items()},
                    "skips": {str(w): dict(o.get("skips", {})) for w, o in self._observed.items()}}
        if self._live is not None:
            return {"mode": "exact", "stream": self._live.state_dict()}
        return dict(self._pending) if self._pending is not None else {"mode": "fresh"}

    def load_state_dict(self, sd: Mapping) -> None:
        if sd.get("mode") not in ("exact", "workers", "fresh"):
            raise ValueError(f"not a PackedStream state: mode={sd.get('mode')!r}")
        self._pending = None if sd["mode"] == "fresh" else dict(sd)
        self._live = None


class VideoStream:
    """The shard reading and decoding of PackedStream without its packer: iterate
    (key, float video [C, T, H, W] in [-1, 1] or a latent, meta) one sample at a time.

    In-process only (no DataLoader workers); `state_dict()` between samples resumes
    bitwise, as PackedStream does with num_workers=0. `skips`: reason -> count.
    """

    def __init__(self, data: DataConfig, *, rank: int | None = None, world_size: int | None = None,
                 skip_log: str | os.PathLike | None = None) -> None:
        self.data = data
        self.urls = expand_shards(data.shards, allow_pipe=data.allow_pipe)
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        if not 0 <= rank < world_size or len(self.urls) < world_size:
            raise ValueError(f"need 0 <= rank < world_size <= shards, got rank={rank}, "
                             f"world_size={world_size}, {len(self.urls)} shards")
        self._stream = _Stream(data, None, self.urls, rank=rank, world_size=world_size, worker=0, num_workers=1,
                               skip_log=skip_log)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, dict]]:
        return self._stream.videos()

    def skip(self, key: str, reason: str, message: str) -> None:
        """Count the sample just yielded as skipped: its consumer could not use it (e.g. too
        small for the VAE). It counts towards data.max_skips_in_a_row like any other skip."""
        self._stream.refuse(key, reason, message)

    @property
    def skips(self) -> dict[str, int]:
        return self._stream.skip_counts()

    def state_dict(self) -> dict:
        return {"mode": "videos", "stream": self._stream.state_dict()}

    def load_state_dict(self, sd: Mapping) -> None:
        if sd.get("mode") != "videos":
            raise ValueError(f"not a VideoStream state: mode={sd.get('mode')!r}")
        self._stream.load_state_dict(sd["stream"])


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

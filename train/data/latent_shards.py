"""Pre-encode pixel shards into latent shards, so DiT training reads VAE latents.

    pixel shard  <key>.mp4|jpg|png + <key>.json
      --decode as the stream does (DataConfig: fps, stride, max_seconds, max_frames)-->
      --fit to the VAE (model/vae/fit.py: 1 + k*ft frames, sides multiples of fs, max_pixels)-->
      --vae.encode (posterior mean x latent_scale)-->
    latent shard <key>.latent.safetensors (tensor "latent", float32 [C', T', H', W'])
                 + <key>.json: the source json (every caption, attrs) plus "latent": {...}

PackedStream reads latent shards with the same DataConfig/PackerConfig machinery: the
latent takes the place of the decoded video and the packer patchifies it as it would
pixels (D = C' * pt*ph*pw). Each source sample is decoded once, with the first clip of a
long video (clip_start="first"), so a latent shard is deterministic.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save

from patchpack.model.vae import fit_to_vae, load_vae

from .config import DataConfig
from .media_decode import DecodeError
from .reader import READ_ERRORS, expand_shards, read_shard, shard_loss
from .records import RecordDecoder, record_key
from .shards import SKIP_LIST, ShardWriter, prepare_out_dir, print_summary
from .skips import SkipCounter

__all__ = ["encode_latent_shards", "latent_members"]


def latent_members(latent: torch.Tensor, info: dict) -> dict[str, bytes]:
    """The tar members of one latent sample: {"latent.safetensors": ..., "json": ...}."""
    data = save({"latent": latent.detach().float().cpu().contiguous()}, metadata={"format": "pt"})
    return {"latent.safetensors": data, "json": json.dumps(info).encode()}


@torch.no_grad()
def encode_latent_shards(src_shards: str | list[str], vae_ckpt: str | os.PathLike, out_dir: str | os.PathLike, *,
                         data: DataConfig | None = None, max_pixels: int | None = None,
                         max_frames: int | None = None, chunk: int | None = None, shard_size: int = 64,
                         threads: int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Encode every readable sample of `src_shards` with the VAE at `vae_ckpt` into `out_dir`.

    data: decoding options (fps, max_seconds, max_frames, ...); its shards/epochs/shuffle
        fields are ignored. max_pixels, max_frames: the VAE fit (per frame pixels; frames,
        rounded down to 1 + k*temporal). chunk: latent frames per encode step (long videos).
    overwrite: replace the shards already in out_dir (refused otherwise). Every sample not
    encoded is a line of out_dir/skipped.jsonl.
    Returns {"written", "shards", "bytes", "skipped": {reason: n}, "latent_channels"} and prints it.
    """
    from tqdm import tqdm

    for name, v, low in (("shard_size", shard_size, 1), ("max_pixels", max_pixels, 1), ("max_frames", max_frames, 1),
                         ("chunk", chunk, 1), ("threads", threads, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{name} must be an integer >= {low}{'' if name == 'shard_size' else ' or None'}, "
                             f"got {v!r}")
    vae = load_vae(vae_ckpt)
    vcfg = vae.config
    if max_pixels is not None and max_pixels < vcfg.spatial ** 2:
        raise ValueError(f"max_pixels={max_pixels} is below one VAE cell (spatial^2 = {vcfg.spatial ** 2} pixels)")
    urls = expand_shards(src_shards)
    out = prepare_out_dir(out_dir, overwrite=overwrite)
    if threads is not None:
        torch.set_num_threads(threads)
    base = data if data is not None else DataConfig()
    dcfg = replace(base, shards=urls, epochs=1, shuffle_shards=False, shuffle_buffer=0, clip_start="first")
    decoder = RecordDecoder(dcfg, random.Random(0))  # the stream's decode; the rng picks captions only
    skip_list = out / SKIP_LIST
    skips = SkipCounter(log_path=skip_list)
    used: set[str] = set()
    index: dict[str, dict] = {}
    with ShardWriter(out, max_count=shard_size) as writer:
        for url in tqdm(urls, desc="encode-latents", unit="shard", disable=not progress):
            for rec in _records(url, dcfg.allow_pipe, skips, index):
                name = record_key(rec)
                try:
                    video, meta = decoder.decode(rec)
                    info = json.loads(rec["json"])
                    if "latent" in meta:
                        raise DecodeError("already_latent", "the source is a latent shard")
                    video = fit_to_vae(video, config=vcfg, max_pixels=max_pixels, max_frames=max_frames)
                except (DecodeError, ValueError) as e:
                    skips.add(getattr(e, "reason", "unfit"), getattr(e, "message", str(e)), key=name)
                    continue
                key = str(rec.get("__key__", ""))
                if key in used:  # the same key in two source shards: keep both, apart
                    key = f"{Path(url).stem}_{key}"
                used.add(key)
                latent = vae.encode(video, chunk=chunk)
                t, h, w = video.shape[1:]
                info["latent"] = {"vae": str(vae_ckpt), "shape": list(latent.shape), "frames": t, "height": h,
                                  "width": w, "fps": meta["fps"], "spatial": vcfg.spatial,
                                  "temporal": vcfg.temporal, "latent_scale": vcfg.latent_scale}
                writer.write(key, latent_members(latent, info))
    summary = {"written": writer.samples, "shards": [str(p) for p in writer.paths], "bytes": writer.bytes,
               "skipped": dict(sorted(skips.counts.items())), "latent_channels": vcfg.latent_channels,
               "skip_list": str(skip_list) if skips.total else None}
    print_summary("encode-latents", summary)
    return summary



def _records(url: str, allow_pipe: bool, skips: SkipCounter, index: dict[str, dict]) -> Iterator[dict]:
    """The records of one source shard; a bad or truncated tar counts the samples it lost."""
    read, error = 0, None
    try:
        for rec in read_shard(url, allow_pipe):
            read += 1
            yield rec
    except READ_ERRORS as e:
        error = f"{type(e).__name__}: {e}"
    loss = shard_loss(url, read, error, index)
    if loss is not None:
        reason, lost, message = loss
        skips.add(reason, message, key=url, count=lost)

"""A tiny pixel-space training run for the tests that sample from one (seconds on one thread)."""

from __future__ import annotations

from pathlib import Path

import torch

from patchpack.train.data.synth import synth
from patchpack.train.loops import train
from patchpack.train.loops.config import TrainConfig
from patchpack.train.options import load_config

# patch (2, 4, 4), <= 64 tokens a clip (16x16 at 4 frames), a 1-block DiT of width 32
TINY = ["data.max_frames=4", "data.shuffle_buffer=2", "packer.patch=[2,4,4]", "packer.max_len=96",
        "packer.rows=1", "packer.max_tokens_per_sample=64", "packer.buffer=2", "model.depth=1", "model.hidden=32",
        "model.heads=2", "model.attn_backend=cpu", "optim.warmup=1", "loop.steps=3", "loop.threads=1"]


def tiny_run(root: Path, *overrides: str, samples: int = 6, seed: int = 0) -> tuple[Path, dict]:
    """Synth `samples` clips into root/shards, train TINY + overrides into root/run: (run dir, summary)."""
    torch.set_num_threads(1)
    synth(root / "shards", num_samples=samples, seed=seed, shard_size=samples, max_side=48, min_side=32,
          progress=False)
    cfg = load_config(TrainConfig, None, [f"run_dir={root / 'run'}", f"data.shards=[{root / 'shards'}]",
                                          *TINY, *overrides])
    return root / "run", train(cfg)

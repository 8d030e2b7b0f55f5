"""patchpack.train.loops: the two training loops and what they share.

    config.py      TrainConfig: one DiT run (embeds PackerConfig, DiTConfig, FlowConfig)
    vae_config.py  VAETrainConfig: one VAE run
    skeleton.py    the step loop both share: stop signals, time limit, log and checkpoint cadence
    dit_loop.py    train(cfg): the packed DiT (one process, or DDP/FSDP2 under torchrun)
    vae_loop.py    train_vae(cfg): the causal video VAE
    run_state.py   RunState: what a checkpoint holds, by name; checkpoint.py writes it atomically
    optim.py       AdamW groups, warmup + cosine, EMA;  metrics.py  metrics.jsonl and the console
"""

from .checkpoint import (
    CorruptCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    resolve_resume,
    verify_checkpoint,
)
from .config import DiTLoopConfig, LoopConfig, OptimConfig, TrainConfig
from .dit_loop import train
from .run_state import (
    TRAINED_PARTS,
    RunState,
    ema_part,
    load_resume,
    load_run_state,
    save_run_state,
)
from .vae_config import VAETrainConfig
from .vae_loop import train_vae

__all__ = [
    "TRAINED_PARTS",
    "CorruptCheckpoint",
    "DiTLoopConfig",
    "LoopConfig",
    "OptimConfig",
    "RunState",
    "TrainConfig",
    "VAETrainConfig",
    "ema_part",
    "latest_checkpoint",
    "list_checkpoints",
    "load_resume",
    "load_run_state",
    "resolve_resume",
    "save_run_state",
    "train",
    "train_vae",
    "verify_checkpoint",
]

"""TrainConfig: one training run, every knob, loadable with `options.load_config`.

One YAML file is one whole run. The run config embeds each component's own dataclass,
so no field is copied and none can drift:

    packer  patchpack.packer.PackerConfig   patch, row length, budgets, policy, ...
    model   patchpack.model.DiTConfig       width, depth, heads, RoPE, prediction, backend
    flow    patchpack.model.FlowConfig      timestep distribution and resolution shift
    conditioning  patchpack.model.ConditioningConfig   given frames per sample (image-to-video, ...)

Some DiTConfig fields follow from other components, and a run fills them in at start-up
(values written in the YAML are replaced): `model.patch` is `packer.patch`,
`model.in_channels` the VAE's latent channels (3 for pixels), `model.text_dim` the text
encoder's width, and `model.rope_train_grid` the largest patch grid per axis in the data
the run has seen. Checkpoints store that resolved config, so sampling rebuilds the
exact model and flow the run trained.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from patchpack.model import ConditioningConfig, DiTConfig, FlowConfig, dit_config
from patchpack.packer import PackerConfig
from patchpack.train.data import DataConfig

__all__ = ["TrainConfig", "OptimConfig", "LoopConfig", "DiTLoopConfig", "check_loop", "check_int", "check_range"]


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate, reached after warmup
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0  # on >= 2-D weights only (train/loops/optim.py)
    warmup: int = 50  # linear warmup steps
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr, reached at loop.steps
    grad_clip: float = 1.0  # max global grad norm; <= 0 turns clipping off

    def __post_init__(self) -> None:
        check_range("optim.lr", self.lr, low=0.0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, low=0.0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        check_range("optim.grad_clip", self.grad_clip)
        check_int("optim.warmup", self.warmup, low=0)
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        for b in self.betas:
            check_range("optim.betas", b, low=0.0, high=1.0, high_open=True)


@dataclass
class LoopConfig:
    """What every training loop's step loop (skeleton.py) needs; each loop adds its own fields."""

    steps: int = 300  # optimizer steps in total (a resume continues up to this)
    log_every: int = 10  # steps between metrics.jsonl records
    ckpt_every: int = 100  # steps between checkpoints (one more is written at the end)
    keep: int = 3  # newest checkpoints kept
    resume: str = "auto"  # "auto": latest in run_dir/checkpoints if any; "none"; or a checkpoint path
    threads: int = 2  # torch.set_num_threads
    time_limit: float | None = None  # seconds; stop (and checkpoint) at the first step past it

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "ckpt_every", "keep", "threads"):
            check_int(f"loop.{name}", getattr(self, name), low=1)
        if self.time_limit is not None:
            check_range("loop.time_limit", self.time_limit, low=0.0, low_open=True)


@dataclass
class DiTLoopConfig(LoopConfig):
    ema_decay: float = 0.999  # EMA of model + text encoder weights
    max_nonfinite: int = 5  # non-finite losses in a row before the run stops with an error
    num_workers: int = 0  # DataLoader workers; 0 resumes bitwise, > 0 resumes at shard positions
    caption_dropout: float = 0.1  # p of the null caption "" (classifier-free guidance)
    # console and TensorBoard (metrics.jsonl is always written, by rank 0)
    progress: bool = True  # a tqdm bar on a TTY; records are printed above it either way
    tensorboard: bool = False  # also write run_dir/tb (needs the tensorboard package)
    # devices and parallelism (train/parallel)
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is available, else cpu
    parallel: str = "ddp"  # under torchrun: "ddp" (replicas) or "fsdp" (FSDP2: params/grads/optimizer sharded)
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "fp32" | "bf16"
    grad_checkpointing: bool = False  # recompute each DiT block in backward: ~1 extra forward, less memory
    compile: bool = False  # torch.compile each DiT block (first steps pay the compile time)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("loop.ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_range("loop.caption_dropout", self.caption_dropout, low=0.0, high=1.0)
        check_int("loop.max_nonfinite", self.max_nonfinite, low=1)
        check_int("loop.num_workers", self.num_workers, low=0)


def _packer() -> PackerConfig:
    # small rows and a short stream buffer: a CPU-sized default; configs/*.yaml set their own
    return PackerConfig(patch=(1, 2, 2), max_len=256, rows=2, buffer=8, oversize="downscale")


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo"  # metrics.jsonl, config.yaml and checkpoints/ go here
    seed: int = 0  # model init, timesteps, noise and caption dropout
    data: DataConfig = field(default_factory=DataConfig)
    packer: PackerConfig = field(default_factory=_packer)
    model: DiTConfig = field(default_factory=lambda: dit_config("tiny"))  # presets: model/config.py
    flow: FlowConfig = field(default_factory=FlowConfig)
    # which frames a training sample is given (clean, t = 0) as a condition; default: none
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    text: str = "tiny"  # text encoder spec (model/text); "tiny" is trained with the DiT
    # A trained video VAE (an exported directory, docs/vae.md): the DiT then works in its latent
    # space, so data.shards must be latent shards (`patchpack encode-latents`); None = pixels.
    vae: str | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: DiTLoopConfig = field(default_factory=DiTLoopConfig)


def check_int(name: str, value: object, *, low: int | None = None) -> None:
    """ValueError naming `name` unless value is an integer (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def check_range(name: str, value: object, *, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> None:
    """ValueError naming `name` unless value is a finite number in the range (NaN and inf never are)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        if high == math.inf:
            want = f"{'>' if low_open else '>='} {low:g}"
        else:
            want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {want}, got {value}")


def check_loop(loop: LoopConfig, *, data: DataConfig) -> None:
    """What every training loop needs of its loop section and data, checked before anything runs."""
    fields = ("steps", "log_every", "ckpt_every", "keep", "threads")
    low = {k: getattr(loop, k) for k in fields if getattr(loop, k) < 1}
    if low:
        raise ValueError(f"loop settings must be >= 1: {low}")
    if not data.shards:
        raise ValueError("data.shards is empty: point it at a directory of .tar shards")

"""TrainConfig: every knob of one training run, loadable with `options.load_config`.

Structured-config friendly on purpose: OmegaConf cannot hold PackerConfig's callable
drop_rate or its tuples, so `PackerOptions` carries the plain fields and builds the
library's PackerConfig (and DataConfig is used as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from patchpack.model.flow import FlowConfig
from patchpack.packer import PackerConfig

from .config import DataConfig


@dataclass
class PackerOptions:
    """The YAML-expressible subset of PackerConfig (see packer/config.py for each field)."""

    patch: list[int] = field(default_factory=lambda: [1, 2, 2])  # (pt, ph, pw)
    max_len: int = 256  # tokens per packed row
    rows: int = 2  # rows per PackedBatch
    max_tokens_per_sample: int | None = None  # budget-resize target; None = max_len
    max_frames: int | None = None  # leading frames kept per sample
    drop_rate: float = 0.0  # random token drop after patchify, in [0, 1)
    policy: str = "bfd"  # "next_fit" | "ffd" | "bfd"
    buffer: int = 8  # open rows held by the stream packer
    oversize: str = "downscale"  # "error" | "drop" | "split_time" | "downscale"
    fill_to_exact: bool = False
    resolution_sampling: list[float] | None = None  # (lo, hi) NaViT-style random scale

    def build(self) -> PackerConfig:
        rs = self.resolution_sampling
        return PackerConfig(
            patch=tuple(self.patch), max_len=self.max_len, rows=self.rows,
            max_tokens_per_sample=self.max_tokens_per_sample, max_frames=self.max_frames,
            drop_rate=self.drop_rate, policy=self.policy, buffer=self.buffer, oversize=self.oversize,
            fill_to_exact=self.fill_to_exact, resolution_sampling=None if rs is None else tuple(rs),
        )


@dataclass
class ModelOptions:
    preset: str = "tiny"  # DiT size preset: tiny | S | B | L | XL (model/config.py)
    depth: int | None = None  # override the preset's depth; None keeps it
    hidden: int | None = None  # override the preset's width (must split into heads)
    heads: int | None = None
    attn_backend: str = "auto"  # patchpack.kernels backend
    prediction: str = "v"  # the DiT's output: "v" (velocity) or "x" (clean tokens; model/flow.py)


@dataclass
class OptimOptions:
    lr: float = 3e-4  # peak learning rate, reached after warmup
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0  # on >= 2-D weights only (train/optim.py)
    warmup: int = 50  # linear warmup steps
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr, reached at loop.steps
    grad_clip: float = 1.0  # max global grad norm; <= 0 turns clipping off


@dataclass
class LoopOptions:
    steps: int = 300  # optimizer steps in total (a resume continues up to this)
    log_every: int = 10  # steps between metrics.jsonl records
    ckpt_every: int = 100  # steps between checkpoints (one more is written at the end)
    keep: int = 3  # newest checkpoints kept
    resume: str = "auto"  # "auto": latest in run_dir/checkpoints if any; "none"; or a checkpoint path
    ema_decay: float = 0.999  # EMA of model + text encoder weights
    max_nonfinite: int = 5  # non-finite losses in a row before the run stops with an error
    num_workers: int = 0  # DataLoader workers; 0 resumes bitwise, > 0 resumes at shard positions
    threads: int = 2  # torch.set_num_threads
    caption_dropout: float = 0.1  # p of the null caption "" (classifier-free guidance)
    # console and TensorBoard (metrics.jsonl is always written, by rank 0)
    progress: bool = True  # a tqdm bar on a TTY; records are printed above it either way
    tensorboard: bool = False  # also write run_dir/tb (needs the tensorboard package)
    # devices and parallelism (train/parallel.py, train/distributed.py)
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is available, else cpu
    parallel: str = "ddp"  # under torchrun: "ddp" (replicas) or "fsdp" (FSDP2: params/grads/optimizer sharded)
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "fp32" | "bf16"
    grad_checkpointing: bool = False  # recompute each DiT block in backward: ~1 extra forward, less memory
    compile: bool = False  # torch.compile each DiT block (first steps pay the compile time)


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo"  # metrics.jsonl, config.yaml and checkpoints/ go here
    seed: int = 0  # model init, timesteps, noise and caption dropout
    data: DataConfig = field(default_factory=DataConfig)
    packer: PackerOptions = field(default_factory=PackerOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    text: str = "tiny"  # text encoder spec (model/text.py); "tiny" is trained with the DiT
    # A trained video VAE (an exported directory, docs/vae.md): the DiT then works in its latent
    # space, so data.shards must be latent shards (`patchpack encode-latents`); None = pixels.
    vae: str | None = None
    # timestep sampling and the resolution shift (model/flow.py), used by training and by every
    # sampler that loads the run, so the two never disagree
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimOptions = field(default_factory=OptimOptions)
    loop: LoopOptions = field(default_factory=LoopOptions)

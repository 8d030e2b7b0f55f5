"""patchpack.packer: spacetime patches, token budgets, token dropping and bin packing.

Everything here is pure data work on CPU tensors; it imports neither model/ nor train/.
"""

from .batch import PackedBatch, PatchedSample, pack, per_token, segment_mean
from .budget import fit_budget, fit_grids, resize_video, sample_budget, sampled_range
from .config import PackerConfig
from .drop import drop_tokens, keep_tokens, resolve_drop_rate
from .errors import SampleError
from .fill import plan_packs_fill
from .patchify import grid_coords, patch_grid, patchify, unpatchify
from .plan import plan_packs
from .prepare import prepare_sample
from .sized import SizedPlan, plan_sized
from .stream import PackerStats, StreamPacker, split_time
from .unsized import UnsizedSample

__all__ = [
    "PackedBatch",
    "PackerConfig",
    "PackerStats",
    "PatchedSample",
    "SampleError",
    "SizedPlan",
    "StreamPacker",
    "UnsizedSample",
    "drop_tokens",
    "fit_budget",
    "fit_grids",
    "grid_coords",
    "keep_tokens",
    "pack",
    "patch_grid",
    "patchify",
    "per_token",
    "plan_packs",
    "plan_packs_fill",
    "plan_sized",
    "prepare_sample",
    "resize_video",
    "resolve_drop_rate",
    "sample_budget",
    "sampled_range",
    "segment_mean",
    "split_time",
    "unpatchify",
]

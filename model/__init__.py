"""patchpack.model: the packed DiT, 3D RoPE, rectified flow, sampler and checkpoints.

    from patchpack.model import DiT, dit_config, flow_loss, generate
    model = DiT(dit_config("tiny", text_dim=encoder.dim))
"""

from .autoencoder import Autoencoder, IdentityAutoencoder
from .checkpoint import load_dit, save_dit
from .config import DiT_configs, DiTConfig, dit_config
from .dit import DiT
from .flow import (
    FlowConfig,
    FlowLoss,
    flow_loss,
    interpolate,
    resolution_shift,
    sample_timesteps,
    shift_time,
    to_velocity,
    velocity_target,
)
from .rope import Rope3D, apply_rope, rope_axis_pairs
from .sampler import check_grid, generate

__all__ = [
    "Autoencoder",
    "DiT",
    "DiTConfig",
    "DiT_configs",
    "FlowConfig",
    "FlowLoss",
    "IdentityAutoencoder",
    "Rope3D",
    "apply_rope",
    "check_grid",
    "dit_config",
    "flow_loss",
    "generate",
    "interpolate",
    "load_dit",
    "resolution_shift",
    "rope_axis_pairs",
    "sample_timesteps",
    "save_dit",
    "shift_time",
    "to_velocity",
    "velocity_target",
]

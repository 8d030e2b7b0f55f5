"""patchpack.model: the packed DiT, 3D RoPE, rectified flow, sampler, checkpoints, and the
text encoders (model/text) and video VAE (model/vae) it works with.

    from patchpack.model import DiT, dit_config, flow_loss, generate
    model = DiT(dit_config("tiny", text_dim=encoder.dim))
"""

from .autoencoder import Autoencoder, IdentityAutoencoder
from .build import Models, build_models
from .checkpoint import load_dit, save_dit
from .conditioning import (
    Condition,
    ConditioningConfig,
    condition_batch,
    given_patches,
    hold_first_frame,
)
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
    "Condition",
    "ConditioningConfig",
    "DiT",
    "DiTConfig",
    "DiT_configs",
    "FlowConfig",
    "FlowLoss",
    "IdentityAutoencoder",
    "Models",
    "Rope3D",
    "apply_rope",
    "build_models",
    "check_grid",
    "condition_batch",
    "dit_config",
    "flow_loss",
    "generate",
    "given_patches",
    "hold_first_frame",
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

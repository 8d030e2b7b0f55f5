"""patchpack: NaViT-style variable-resolution packing for video diffusion transformers.

Subpackages (each a top-level folder of the repository):
    patchpack.packer   patchify, token budgets, token dropping, bin packing, PackedBatch
    patchpack.kernels  varlen attention backends and their dispatcher
    patchpack.model    the packed DiT, rectified flow, sampler
    patchpack.train    data streaming and the training loop
"""

__version__ = "0.1.0"

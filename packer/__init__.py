"""patchpack.packer: spacetime patches, token budgets, token dropping and bin packing.

Everything here is pure data work on CPU tensors; it imports neither model/ nor train/.
"""

from .batch import PackedBatch, PatchedSample, pack

__all__ = ["PackedBatch", "PatchedSample", "pack"]

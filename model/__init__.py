"""patchpack.model."""

"""patchpack.train."""

"""patchpack.train: everything that runs models on data, in four subpackages.

    data/      shards -> decode -> PackedStream (the data pipeline; webdataset, PyAV)
    loops/     the DiT and VAE training loops, their configs and checkpoints
    parallel/  torchrun processes and the knobs applied to a built model (DDP, FSDP2, compile)
    apps/      generate, gallery, evaluate, demo
    options.py config loading at the edge: dataclass defaults <- YAML <- key=value
    files.py   fsync of directories, for shard and checkpoint writers
    stop.py    SIGTERM and Ctrl-C: a flag the loops and the data stream stop at, at safe points
"""

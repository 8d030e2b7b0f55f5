"""patchpack.benchmarks: measurements, each a script that prints a table and writes JSON
(and a PNG) with its baselines measured in the same run.

    patchpack bench packing|attention|pipeline|e2e|decode_memory [--quick]
    python -m patchpack.benchmarks.packing          (the same)

packing.py    fill, planning speed and pack speed of every packer, per regime
attention.py  varlen attention backends against the per-segment ideal
pipeline.py   shard read + decode + pack throughput per DataLoader worker count
e2e.py        useful tokens/s of the same training under five batchings
decode_memory.py  peak memory of each decode path against clip length
common.py, distributions.py, buckets.py  what the scripts share
"""

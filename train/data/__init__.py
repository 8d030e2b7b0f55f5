"""patchpack.train.data: the data pipeline, from media files to packed batches.

    shards (webdataset tars)  <- make_shards (your files) | synth (embedded data) | encode_latent_shards
    reader.py        shard lists, node/worker split, tar records
    records.py       one record -> caption + decoded video (or a VAE latent)
    media_decode.py  PyAV / Pillow decode at native size; media_encode.py the reverse
    packed_stream.py PackedStream (-> PackedBatch via patchpack.packer) and VideoStream
    skips.py         bad samples counted by reason, the skip list, NoUsableData

    from patchpack.train.data import DataConfig, PackedStream
    stream = PackedStream(DataConfig(shards=["shards/"]), PackerConfig(max_len=4096))
"""

from .config import DataConfig
from .latent_shards import encode_latent_shards, latent_members
from .media_decode import (
    IMAGE_EXTS,
    LATENT_EXT,
    VIDEO_EXTS,
    Decoded,
    DecodeError,
    decode_image,
    decode_latent,
    decode_video,
    from_video_CTHW,
    to_video_CTHW,
)
from .media_encode import encode_image, encode_mp4, video_codec
from .packed_stream import PackedStream, VideoStream
from .reader import derive_seed, expand_shards, read_shard, split_shards
from .records import MEDIA_EXTS, RecordDecoder, record_key
from .shards import ShardWriter, make_shards, print_summary, read_captions
from .skips import NoUsableData, SkipCounter, format_counts, merge_counts
from .synth import make_sample, synth

__all__ = [
    "DataConfig",
    "DecodeError",
    "Decoded",
    "IMAGE_EXTS",
    "LATENT_EXT",
    "MEDIA_EXTS",
    "NoUsableData",
    "PackedStream",
    "RecordDecoder",
    "ShardWriter",
    "SkipCounter",
    "VIDEO_EXTS",
    "VideoStream",
    "decode_image",
    "decode_latent",
    "decode_video",
    "derive_seed",
    "encode_image",
    "encode_latent_shards",
    "encode_mp4",
    "expand_shards",
    "format_counts",
    "from_video_CTHW",
    "latent_members",
    "make_sample",
    "make_shards",
    "merge_counts",
    "print_summary",
    "read_captions",
    "read_shard",
    "record_key",
    "split_shards",
    "synth",
    "to_video_CTHW",
    "video_codec",
]

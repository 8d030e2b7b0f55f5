"""The DiT with the real trainable text encoder: gradients reach it, the sampler runs on it."""

from __future__ import annotations

import torch
from dit_testing import TEXT_DIM, make_sample, random_dit

from patchpack.model import flow_loss, generate
from patchpack.model.text import TinyTextConfig, TinyTextEncoder
from patchpack.packer import pack


def test_flow_loss_trains_the_tiny_text_encoder_too():
    model = random_dit("cpu")
    encoder = TinyTextEncoder(TinyTextConfig(dim=TEXT_DIM, heads=2))
    samples = [make_sample((1, 2, 3), seed=0), make_sample((2, 2, 2), seed=1)]
    batch = pack(samples, [[0, 1]], 16)
    text, lengths = encoder(["a red square moving left", ""])  # "" is the CFG null caption
    loss = flow_loss(model, batch, text, lengths, generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_generate_with_the_tiny_text_encoder():
    model = random_dit("cpu", depth=1)
    encoder = TinyTextEncoder(TinyTextConfig(dim=TEXT_DIM, heads=2)).eval()
    videos = generate(model, encoder, ["red disc", "blue digit 3 up"], [(1, 4, 6), (3, 6, 4)], steps=2)
    assert [tuple(v.shape) for v in videos] == [(3, 1, 4, 6), (3, 3, 6, 4)]

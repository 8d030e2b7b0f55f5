"""Conditioning sanity: a tiny DiT + the tiny text encoder, trained briefly on full-frame
colours named by their captions, must paint the named colour.

A dead text path (cross-attention or the pooled caption not reaching the blocks, captions
shuffled against their images, CFG mixing up its halves) leaves the colour at chance, 1 in
6, however long the model trains: "under-trained" can never hide it. The same run with the
captions scrambled is the guard against a vacuous pass.
"""

from __future__ import annotations

import pytest
import torch

from patchpack.model import DiT, dit_config, flow_loss, generate
from patchpack.model.flow import FlowConfig
from patchpack.model.text import TinyTextConfig, TinyTextEncoder, drop_captions
from patchpack.packer import PatchedSample, pack, patchify

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
           "yellow": (235, 210, 40), "white": (245, 245, 245), "purple": (150, 60, 200)}  # synth's palette
SIDE, PATCH = 8, (1, 4, 4)  # 8x8 images, 4 tokens each
FLOW = FlowConfig(shift_base_tokens=4)  # no shift at this tiny grid: t as sampled


def _image(colour: str) -> torch.Tensor:
    rgb = torch.tensor(COLOURS[colour], dtype=torch.float32) / 127.5 - 1
    return rgb[:, None, None, None].expand(3, 1, SIDE, SIDE)  # [C, T, H, W] in [-1, 1]


def _batch(colours: list[str]):
    samples = []
    for i, c in enumerate(colours):
        tokens, coords = patchify(_image(c), PATCH)
        samples.append(PatchedSample(tokens, coords, (1, SIDE // PATCH[1], SIDE // PATCH[2]), key=str(i)))
    per_row = 16
    plan = [list(range(i, min(i + per_row, len(samples)))) for i in range(0, len(samples), per_row)]
    return pack(samples, plan, per_row * 4)


def _train(captions_of, *, steps: int, seed: int = 0) -> tuple[DiT, TinyTextEncoder]:
    torch.manual_seed(seed)
    encoder = TinyTextEncoder(TinyTextConfig(dim=32, layers=1, heads=2))
    model = DiT(dit_config("tiny", hidden=64, depth=2, heads=4, text_dim=32, patch=PATCH, attn_backend="cpu"))
    params = list(model.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    for _ in range(steps):
        colours = [names[int(i)] for i in torch.randint(len(names), (32,), generator=g)]
        batch = _batch(colours)
        captions = drop_captions([captions_of(c) for c in colours], 0.1, generator=g)
        text, lengths = encoder(captions)
        loss = flow_loss(model, batch, text, lengths, config=FLOW, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), encoder.eval()


def _named_colour_rate(model, encoder, *, per_colour: int = 8) -> float:
    names = list(COLOURS)
    prompts = [f"a frame in {c}" for c in names for _ in range(per_colour)]
    videos = generate(model, encoder, prompts, [(1, SIDE, SIDE)] * len(prompts), steps=10, cfg_scale=3.0,
                      seed=1, flow=FLOW)
    palette = (torch.tensor([COLOURS[c] for c in names], dtype=torch.float32) / 127.5 - 1)
    hits = 0
    for prompt, video in zip(prompts, videos):
        mean = video.clamp(-1, 1).mean(dim=(1, 2, 3))  # the image's mean RGB
        hits += names[int(torch.cdist(mean[None], palette).argmin())] == prompt.split()[-1]
    return hits / len(prompts)


def test_the_caption_decides_the_colour():
    model, encoder = _train(lambda c: f"a frame in {c}", steps=150)
    assert _named_colour_rate(model, encoder) >= 0.95


def test_guard_scrambled_captions_leave_the_colour_at_chance():
    """Trained on captions that name a random colour, the model cannot follow the prompt:
    the test above measures the text path, not a palette the model paints anyway."""
    g = torch.Generator().manual_seed(7)
    names = list(COLOURS)
    model, encoder = _train(lambda c: f"a frame in {names[int(torch.randint(6, (1,), generator=g))]}", steps=150)
    assert _named_colour_rate(model, encoder) <= 0.5


if __name__ == "__main__":
    pytest.main([__file__, "-q"])

"""Shared builders for the model tests: random-weight tiny DiTs, samples and captions."""

from __future__ import annotations

import torch

from patchpack.model import DiT, dit_config
from patchpack.packer import PatchedSample, grid_coords, pack

TEXT_DIM = 16


def random_dit(backend: str = "reference", *, depth: int = 2, seed: int = 0, **kw) -> DiT:
    """A tiny DiT whose every weight is random: adaLN-Zero would make outputs 0 and the
    invariance tests vacuous."""
    torch.manual_seed(seed)
    cfg = dit_config("tiny", hidden=64, depth=depth, heads=4, text_dim=TEXT_DIM, attn_backend=backend, **kw)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15 if p.ndim > 1 else 0.05)
    return model.eval()


def make_sample(grid, *, patch_dim: int = 12, seed: int = 0, keep: float = 1.0) -> PatchedSample:
    """Random tokens on `grid`; keep < 1 drops tokens at random (coords keep their order)."""
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords(grid)
    if keep < 1.0:
        idx = torch.randperm(len(coords), generator=g)[: max(1, int(keep * len(coords)))].sort().values
        coords = coords[idx]
    return PatchedSample(torch.randn(len(coords), patch_dim, generator=g), coords, tuple(grid), key=f"s{seed}")


def make_text(lengths, *, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(n, TEXT_DIM, generator=g) for n in lengths]


def run_packed(model, samples, plan, max_len, t, texts, *, rows=None):
    """Pack `samples` by `plan`; return per-input-sample outputs (in input order)."""
    batch = pack(samples, plan, max_len, rows=rows)
    order = [i for row in plan for i in row]
    t_S = torch.tensor([t[i] for i in order], dtype=torch.float32)
    text = torch.cat([texts[i] for i in order])
    lengths = torch.tensor([len(texts[i]) for i in order])
    with torch.no_grad():
        out = model(batch, t_S, text, lengths)
    assert torch.isfinite(out).all(), "padding or samples produced non-finite values"
    per = batch.split(out)
    result = [None] * len(samples)
    for s, i in enumerate(order):
        result[i] = per[s]
    return result


class StubTextEncoder:
    """Deterministic captions -> (tokens, lengths): one token per word, "" -> one null token."""

    dim = TEXT_DIM

    def __call__(self, captions):
        toks, lens = [], []
        for c in captions:
            words = c.split() or ["<null>"]
            for w in words:
                g = torch.Generator().manual_seed(sum(map(ord, w)) * 31 + len(w))
                toks.append(torch.randn(1, TEXT_DIM, generator=g))
            lens.append(len(words))
        return torch.cat(toks), torch.tensor(lens, dtype=torch.int64)

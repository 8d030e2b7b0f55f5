"""A Diffusion Transformer that runs natively on packed sequences (PackedBatch).

Borrowed math and layout:
  * facebookresearch/DiT models.py (Peebles & Xie, arXiv:2212.09748): adaLN-Zero blocks,
    timestep embedder, final layer, one `initialize_weights`.
  * PixArt-alpha (arXiv:2310.00426): cross-attention to caption tokens inside each block.
  * NaViT (arXiv:2307.06304): many variable-size samples packed into fixed [B, L] rows.

Packing changes four things against DiT:
  * conditioning is per *sample*, not per row: adaLN modulation is computed once per
    sample (S rows, cheap) and gathered to tokens by `segment_ids`; padding tokens
    (segment -1) get zero modulation, so their gates are 0 and they stay finite;
  * a timestep per token, in effect: tokens a sample is given as a condition (`batch.given`,
    clean frames) see t = 0 and the rest their sample's t. The modulation is then computed
    for 2S rows, (sample, generated) and (sample, given), and gathered by
    `batch.condition_index()`: the same N x 6D gather as without conditions, plus S rows
    through each adaLN linear (Open-Sora sets a given frame's t to 0; here inside a pack);
  * attention is varlen (patchpack.kernels.varlen_attention) over `cu_seqlens`, so no
    token reads another sample; cross-attention reads each sample's own caption
    through `batch.cross_cu_seqlens(text_lengths)`; padding segments read no keys;
  * positions are 3D RoPE on the batch's (t, h, w) coords (model/rope.py), never a
    fixed-size table: any grid works.
Inside the trunk tokens are flattened to (N, D) with N = B * L, the layout the kernels take.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from patchpack.kernels import varlen_attention
from patchpack.packer import PackedBatch, per_token, segment_mean

from .config import DiTConfig
from .rope import Rope3D, apply_rope

__all__ = ["DiT", "DiTBlock"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class AttnLayout(NamedTuple):
    """Everything the blocks need about the packed layout, computed once per forward."""

    cu_seqlens: Tensor  # (G+1,) int32 over the N = B*L tokens
    max_seqlen: int
    cross_cu_seqlens: Tensor  # (G+1,) int32 over caption tokens; padding segments empty
    cross_max_seqlen: int
    cos: Tensor  # (N, 1, head_dim/2) RoPE
    sin: Tensor
    backend: str


#################################################################################
#               Embedding Layers for Timesteps and Caption Tokens               #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Scalar t in [0, 1] -> vector, via sinusoidal features of 1000 * t and an MLP (as DiT)."""

    def __init__(self, hidden: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (1000.0 * t.float())[:, None] * freqs[None]  # 1000*t: DiT's integer-step scale
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


#################################################################################
#                                   Attention                                   #
#################################################################################


def _qk_norm(head_dim: int, enabled: bool) -> nn.Module:
    return nn.RMSNorm(head_dim, eps=1e-6) if enabled else nn.Identity()


class SelfAttention(nn.Module):
    """Varlen self-attention within each segment, QK-norm, 3D RoPE on q and k."""

    def __init__(self, dim: int, heads: int, *, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = _qk_norm(self.head_dim, qk_norm)
        self.k_norm = _qk_norm(self.head_dim, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, layout: AttnLayout) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)  # 3 x (N, H, hd)
        q = apply_rope(self.q_norm(q), layout.cos, layout.sin)  # (N, H, hd)
        k = apply_rope(self.k_norm(k), layout.cos, layout.sin)  # (N, H, hd)
        o = varlen_attention(
            q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen,
            backend=layout.backend,
        )  # (N, H, hd)
        return self.proj(o.flatten(1))  # (N, D)


class CrossAttention(nn.Module):
    """Video tokens (queries) read their own sample's caption tokens (keys/values)."""

    def __init__(self, dim: int, heads: int, *, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = _qk_norm(self.head_dim, qk_norm)
        self.k_norm = _qk_norm(self.head_dim, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, y: Tensor, layout: AttnLayout) -> Tensor:
        q = self.q_norm(self.q(x).unflatten(-1, (self.heads, self.head_dim)))  # (N, H, hd)
        k, v = self.kv(y).unflatten(-1, (2, self.heads, self.head_dim)).unbind(1)  # 2 x (U, H, hd)
        o = varlen_attention(
            q, self.k_norm(k), v, layout.cu_seqlens, layout.cross_cu_seqlens,
            layout.max_seqlen, layout.cross_max_seqlen, backend=layout.backend,
        )  # (N, H, hd); rows of padding segments are 0 (no keys)
        return self.proj(o.flatten(1))  # (N, D)


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP (gated), with caption cross-attention between them."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, qk_norm=qk_norm)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, y: Tensor, cond_index: Tensor, layout: AttnLayout) -> Tensor:
        mod = per_token(self.adaLN_modulation(c), cond_index)  # (S or 2S, 6D) -> (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), layout)  # (N, D)
        x = x + self.cross(self.norm_cross(x), y, layout)  # (N, D)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, D)
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor, cond_index: Tensor) -> Tensor:
        shift, scale = per_token(self.adaLN_modulation(c), cond_index).chunk(2, dim=-1)  # (N, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, patch_dim)


class DiT(nn.Module):
    """Packed DiT: velocity for every token of a PackedBatch (padding rows are meaningless)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d = config.hidden
        self.x_embedder = nn.Linear(config.patch_dim, d)  # a patch is already a vector
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = Mlp(config.text_dim, d, d)  # caption tokens -> cross-attention keys
        self.pool_embedder = Mlp(config.text_dim, d, d)  # mean caption -> adaLN condition
        self.rope = Rope3D(
            config.head_dim,
            theta=config.rope_theta,
            split=config.rope_split,
            extrapolation=config.rope_extrapolation,
            train_grid=config.rope_train_grid,
        )
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.heads, mlp_ratio=config.mlp_ratio, qk_norm=config.qk_norm)
            for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        for mlp in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(mlp.weight, std=0.02)
        for block in self.blocks:
            # adaLN-Zero: gates start at 0, so each block starts as the identity.
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            # Cross-attention has no gate (PixArt-alpha): zero its output projection instead.
            nn.init.zeros_(block.cross.proj.weight)
            nn.init.zeros_(block.cross.proj.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _check_inputs(self, batch: PackedBatch, t_S: Tensor, text_tokens: Tensor, text_lengths: Tensor) -> None:
        s, cfg = batch.num_samples, self.config
        if batch.tokens.shape[-1] != cfg.patch_dim:
            raise ValueError(
                f"batch tokens have {batch.tokens.shape[-1]} features, model expects "
                f"patch_dim={cfg.patch_dim} (in_channels={cfg.in_channels}, patch={cfg.patch})"
            )
        if batch.given is not None and tuple(batch.given.shape) != tuple(batch.shape):
            raise ValueError(f"batch.given must be [B, L] = {list(batch.shape)}, got {tuple(batch.given.shape)}")
        if tuple(t_S.shape) != (s,):
            raise ValueError(f"t_S must be [S]=[{s}] (one timestep per sample), got {tuple(t_S.shape)}")
        if tuple(text_lengths.shape) != (s,):
            raise ValueError(f"text_lengths must be [S]=[{s}], got {tuple(text_lengths.shape)}")
        if text_tokens.ndim != 2 or text_tokens.shape[1] != cfg.text_dim:
            raise ValueError(f"text_tokens must be [total, text_dim={cfg.text_dim}], got {tuple(text_tokens.shape)}")
        total = int(text_lengths.sum())  # host sync when on GPU: once per forward
        if total != text_tokens.shape[0]:
            raise ValueError(f"text_lengths sum to {total} but text_tokens has {text_tokens.shape[0]} rows")

    def forward(self, batch: PackedBatch, t_S: Tensor, text_tokens: Tensor, text_lengths: Tensor) -> Tensor:
        """
        batch: PackedBatch with tokens [B, L, patch_dim] (noisy x_t), S samples
        t_S: [S] flow time of each sample in [0, 1] (1 = pure noise, model/flow.py); tokens in
            `batch.given` (if any) are clean conditions and see t = 0 instead
        text_tokens: [U, text_dim] caption tokens of the S samples back to back, in batch order
        text_lengths: [S] int, caption tokens per sample
        returns: velocity [B, L, patch_dim]; rows at padding are meaningless (finite)
        """
        self._check_inputs(batch, t_S, text_tokens, text_lengths)
        b, l = batch.shape
        seg = batch.segment_ids.reshape(-1)  # (N,)
        grid = batch.per_token(batch.grid.to(seg.device), pad_value=1)  # (N, 3) each token's sample grid
        cos, sin = self.rope(batch.coords.reshape(-1, 3), grid)  # (N, 1, hd/2)
        cross_cu, cross_max = batch.cross_cu_seqlens(text_lengths)
        layout = AttnLayout(
            batch.cu_seqlens, batch.max_seqlen, cross_cu, cross_max, cos, sin, self.config.attn_backend
        )
        x = self.x_embedder(batch.tokens.reshape(b * l, -1))  # (N, D)
        y = self.y_embedder(text_tokens)  # (U, D)
        pooled = self.pool_embedder(segment_mean(text_tokens, text_lengths))  # (S, D)
        if batch.given is None:
            c = self.t_embedder(t_S) + pooled  # (S, D): one condition per sample
        else:  # rows s: the sample's t, rows S + s: t = 0 for its given tokens
            t_2S = torch.cat([t_S, torch.zeros_like(t_S)])
            c = self.t_embedder(t_2S) + pooled.repeat(2, 1)  # (2S, D)
        index = batch.condition_index()  # (N,) rows of c; -1 on padding
        for block in self.blocks:
            x = block(x, c, y, index, layout)  # (N, D)
        x = self.final_layer(x, c, index)  # (N, patch_dim)
        return x.reshape(b, l, -1)  # (B, L, patch_dim)

"""Sampling from a training run: load a checkpoint, generate many prompts x sizes, write files.

    run = load_run("runs/demo")                       # newest checkpoint, EMA weights
    reqs = requests(["a red circle ..."], sizes=[(32, 32), (32, 96)], frames=[8, 1])
    videos = sample(run, reqs, steps=30, cfg_scale=4.0, seed=0)   # one packed pass per Euler step
    write_outputs("out/", reqs, videos, fps=run.fps)  # mp4/gif/png, contact sheet, gallery, manifest

A checkpoint stores the resolved training config (train/loops/run_state.py), so loading
rebuilds the exact DiT, text encoder and flow (patchpack.model.build_models) and needs
nothing else. Sizes are in
pixels; every request is checked against the model's patch before anything runs.

A request may carry given frames (`Request.condition`, built by prompting.py: image-to-video,
extension, connection, SDEdit); `sample` turns them into the DiT's units, encoding them
with the run's VAE if it has one, and all requests still share one packed pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchpack.model import Condition, DiT, build_models, check_grid, generate
from patchpack.train.data import from_video_CTHW, to_video_CTHW
from patchpack.train.loops import (
    TRAINED_PARTS,
    CorruptCheckpoint,
    TrainConfig,
    ema_part,
    latest_checkpoint,
    list_checkpoints,
    load_run_state,
    verify_checkpoint,
)
from patchpack.train.options import load_config

from .gallery import GalleryItem, contact_sheet, write_gallery, write_video_files
from .prompting import Given

WEIGHTS = ("ema", "raw")


@dataclass
class LoadedRun:
    model: DiT
    encoder: nn.Module
    config: TrainConfig
    step: int
    checkpoint: Path
    weights: str  # "ema" or "raw"
    vae: nn.Module | None = None  # the run's video VAE (cfg.vae): the DiT samples its latents

    @property
    def fps(self) -> float:
        return float(self.config.data.fps or 8.0)

    @property
    def default_frames(self) -> int:
        """A clip length the run can make, near 8: 8 in pixels, the next 1 + k x temporal with the VAE."""
        if self.vae is None:
            return 8
        ft = self.vae.config.temporal
        return 1 + -(-7 // ft) * ft

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.model.config.patch)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest one of a run directory; ValueError otherwise."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint not found: {p}")
    if (p / "state.json").is_file():
        return p
    for d in (p / "checkpoints", p):
        found = latest_checkpoint(d)
        if found is not None:
            return found
    raise ValueError(f"{p} holds no checkpoint (expected a run directory with checkpoints/ or a step_* directory)")


def load_run(path: str | Path, *, weights: str = "ema", attn_backend: str | None = None,
             rope_extrapolation: str | None = None) -> LoadedRun:
    """Rebuild the DiT, text encoder (and VAE) of a training checkpoint, in eval mode on CPU,
    exactly as the run's stored config says: model, flow, patch, the grid it trained on.

    weights: "ema" (the averaged weights, what one samples from) or "raw" (the last step's).
    attn_backend, rope_extrapolation: DiT config fields to change at load time.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}, expected one of {WEIGHTS}")
    ckpt = find_checkpoint(path)
    try:
        state = load_run_state(ckpt)
    except CorruptCheckpoint as e:  # name the bad file, and the newest one that is intact
        raise CorruptCheckpoint(f"{e}{_fallback_hint(ckpt)}") from None
    cfg = load_config(TrainConfig, yaml_text=state.config)
    changes = {k: v for k, v in (("attn_backend", attn_backend), ("rope_extrapolation", rope_extrapolation)) if v}
    cfg = replace(cfg, model=replace(cfg.model, **changes))
    models = build_models(cfg.model, text=cfg.text, vae=cfg.vae)
    model, encoder = models.dit, models.text_encoder
    model.load_state_dict(state.weights)
    if state.text is not None:
        encoder.load_state_dict(state.text)
    if weights == "ema":  # the EMA holds the floating-point entries of every trained part
        for part, module in zip(TRAINED_PARTS, (model, encoder)):
            shadow = ema_part(state.ema, part)
            if shadow:  # not strict: the EMA skips integer buffers, but it may hold nothing unknown
                unexpected = module.load_state_dict(shadow, strict=False).unexpected_keys
                if unexpected:
                    raise ValueError(f"{ckpt}: EMA entries the model does not have: {unexpected[:5]}")
    return LoadedRun(model.eval(), encoder.eval(), cfg, state.step, ckpt, weights, models.vae)


def _fallback_hint(bad: Path) -> str:
    older = [p for p in list_checkpoints(bad.parent) if p.name < bad.name]
    for p in reversed(older):
        try:
            verify_checkpoint(p)
        except CorruptCheckpoint:
            continue
        return f"; the newest intact checkpoint is {p}: pass --ckpt {p}"
    return ""


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    prompt: str
    frames: int
    height: int
    width: int
    tag: str = ""  # free text shown with the result, e.g. "trained size" or "unseen aspect 1:3"
    condition: Given | None = None  # given frames (prompting.py); None: text only

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def parse_size(text: str) -> tuple[int, int]:
    """'96x160' -> (96, 160): height x width in pixels."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 96x160")
    h, w = (int(p) for p in parts)
    if h < 1 or w < 1:
        raise ValueError(f"size {text!r}: height and width must be >= 1")
    return h, w


def requests(prompts: Sequence[str], *, sizes: Sequence[tuple[int, int]], frames: Sequence[int]) -> list[Request]:
    """Every prompt at every size. frames: one value for all sizes, or one per size."""
    if not prompts or not sizes:
        raise ValueError(f"need at least one prompt and one size, got {len(prompts)} and {len(sizes)}")
    if len(frames) == 1:
        frames = list(frames) * len(sizes)
    if len(frames) != len(sizes):
        raise ValueError(f"--frames: give one value for all sizes or one per size; got {len(frames)} for {len(sizes)} sizes")
    bad = [f for f in frames if isinstance(f, bool) or not isinstance(f, int) or f < 1]
    if bad:
        raise ValueError(f"frames must be integers >= 1, got {bad}")
    empty = [p for p in prompts if not isinstance(p, str)]
    if empty:
        raise ValueError(f"prompts must be strings, got {empty[:3]}")
    return [Request(p, t, h, w) for p in prompts for (h, w), t in zip(sizes, frames)]


def model_grids(run: LoadedRun, reqs: Sequence[Request], *, max_tokens: int) -> list[tuple[int, int, int]]:
    """Each request's grid in the DiT's units (pixels, or the VAE's latent frames and rows);
    ValueError naming the first request the model cannot make (VAE factors, patch, token cap)."""
    grids = []
    for i, r in enumerate(reqs):
        try:
            grid = r.grid if run.vae is None else run.vae.config.latent_shape(*r.grid)
            check_grid(i, grid, patch=run.patch, max_tokens=max_tokens)
        except ValueError as e:
            raise ValueError(f"{r.frames} frames at {r.height}x{r.width}: {e}") from None
        grids.append(grid)
    return grids


def sample(run: LoadedRun, reqs: Sequence[Request], *, steps: int = 30, cfg_scale: float = 4.0, seed: int = 0,
           max_tokens: int = 16384, progress: bool = False, solver: str = "euler") -> list[np.ndarray]:
    """uint8 [T, H, W, 3] per request; all requests share each packed sampling step.

    progress: a tqdm bar over the steps (stderr). solver: "euler" or "heun" (model/sampler.py).
    """
    from tqdm import tqdm

    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
    for name, v in (("steps", steps), ("max_tokens", max_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    grids = model_grids(run, reqs, max_tokens=max_tokens)
    conditions = [None if r.condition is None else model_condition(run, r.condition) for r in reqs]
    with tqdm(total=steps, desc="sampling", unit="step", disable=not progress) as bar:
        videos = generate(run.model, run.encoder, [r.prompt for r in reqs], grids, steps=steps, cfg_scale=cfg_scale,
                          seed=seed, max_tokens=max_tokens, autoencoder=run.vae, flow=run.config.flow,
                          on_step=lambda k: bar.update(1), conditions=conditions, solver=solver)
    return [from_video_CTHW(v) for v in videos]


def model_condition(run: LoadedRun, given: Given) -> Condition:
    """A request's pixel frames as the sampler's Condition, in the DiT's units.

    Pixels: the frames as they are. With the causal VAE, a latent frame is given when all its
    pixel frames are; a given run that starts at frame 0 is encoded as a prefix, which is
    exactly what the whole clip's encoding holds there (causality). A run starting later is
    encoded alone behind a copy of its first frame, and that extra latent frame is dropped:
    the VAE never saw what precedes it, so this is an approximation. SDEdit encodes the
    whole clip.
    """
    video = to_video_CTHW(given.frames)  # (3, T, H, W) in [-1, 1]
    given_T = torch.from_numpy(given.given.copy())
    if run.vae is None:
        return Condition(video, given_T if given_T.any() else None, given.strength)
    vae, ft = run.vae, run.vae.config.temporal
    t = video.shape[1]
    cover = [range(0, 1)] + [range(1 + (j - 1) * ft, 1 + j * ft) for j in range(1, 1 + (t - 1) // ft)]
    given_L = torch.tensor([bool(given_T[r.start:r.stop].all()) for r in cover])
    if given.strength is not None:
        latent = vae.encode(video)
    else:
        latent = torch.zeros(vae.config.latent_channels, len(cover), *vae.config.latent_shape(1, *video.shape[2:])[1:])
        j = 0
        while j < len(cover):
            if not given_L[j]:
                j += 1
                continue
            end = j
            while end + 1 < len(cover) and given_L[end + 1]:
                end += 1
            px = video[:, cover[j].start:cover[end].stop]
            if j == 0:
                latent[:, : end + 1] = vae.encode(px)
            else:
                latent[:, j : end + 1] = vae.encode(torch.cat([px[:, :1], px], dim=1))[:, 1:]
            j = end + 1
    return Condition(latent, given_L if given_L.any() else None, given.strength)


# --------------------------------------------------------------------------- files


def write_outputs(out_dir: str | Path, reqs: Sequence[Request], videos: Sequence[np.ndarray], *, fps: float,
                  title: str = "patchpack samples", intro: str = "", notes: Sequence[list[str]] | None = None,
                  info: dict | None = None, references: Sequence[np.ndarray | None] | None = None) -> dict:
    """mp4/gif/png per video, contact_sheet.png, index.html and manifest.json; returns the manifest.

    references: a real clip per request (same caption and size) or None, written as
    ref_<stem>.* and shown beside its sample in the gallery and on the contact sheet.
    manifest.json: {"items": [{"prompt", "frames", "height", "width", "tag", "files": {...}
    [, "reference": {...}]}], **info}
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(2, len(str(len(reqs) - 1)))
    items, gallery = [], []
    for i, (r, frames) in enumerate(zip(reqs, videos, strict=True)):
        stem = f"{i:0{digits}d}_{r.frames}x{r.height}x{r.width}"
        files = write_video_files(out, stem, frames, fps=fps)
        item = {f.name: getattr(r, f.name) for f in fields(r) if f.name != "condition"}
        if r.condition is not None:
            item["condition"] = r.condition.summary()
        items.append({**item, "files": {k: v for k, v in asdict(files).items() if v}})
        ref = None
        if references is not None and references[i] is not None:
            ref = write_video_files(out, f"ref_{stem}", references[i], fps=fps)
            items[-1]["reference"] = {k: v for k, v in asdict(ref).items() if v}
        extra = [r.tag] if r.tag else []
        gallery.append(GalleryItem(r.prompt, r.grid, files, extra + (list(notes[i]) if notes else []), ref))
    labels = [f"{r.frames}x{r.height}x{r.width}  {r.prompt}" for r in reqs]
    rows = list(videos)
    if references is not None:  # each frame: generated above reference, a white line between
        labels = [label if ref is None else f"{label}   (top: generated, bottom: reference)"
                  for label, ref in zip(labels, references)]
        rows = [v if ref is None else np.concatenate([v, np.full_like(v[:, :1], 255), ref], axis=1)
                for v, ref in zip(videos, references)]
    contact_sheet(out / "contact_sheet.png", rows, labels)
    write_gallery(out / "index.html", gallery, title=title, intro=intro)
    manifest = {"items": items, **(info or {})}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

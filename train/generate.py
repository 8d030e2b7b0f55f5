"""Sampling from a training run: load a checkpoint, generate many prompts x sizes, write files.

    run = load_run("runs/demo")                       # newest checkpoint, EMA weights
    reqs = requests(["a red circle ..."], sizes=[(32, 32), (32, 96)], frames=[8, 1])
    videos = sample(run, reqs, steps=30, cfg_scale=4.0, seed=0)   # one packed pass per Euler step
    write_outputs("out/", reqs, videos, fps=run.fps)  # mp4/gif/png, contact sheet, gallery, manifest

A checkpoint stores the resolved training config, so loading rebuilds the exact DiT and
text encoder (train/trainer.py `build_models`) and needs nothing else. Sizes are in
pixels; every request is checked against the model's patch before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch import nn

from patchpack.model import DiT, check_grid, generate

from .checkpoint import latest_checkpoint, load_checkpoint
from .media import GalleryItem, contact_sheet, to_frames, write_gallery, write_video_files
from .options import load_config
from .train_config import TrainConfig

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
    """Rebuild the DiT and text encoder of a training checkpoint, in eval mode on CPU.

    weights: "ema" (the averaged weights, what one samples from) or "raw" (the last step's).
    attn_backend, rope_extrapolation: DiT config fields to change at load time.
    """
    from .trainer import build_models  # trainer pulls in the data stack; only needed here

    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}, expected one of {WEIGHTS}")
    ckpt = find_checkpoint(path)
    step, model_state, state = load_checkpoint(ckpt)
    cfg = load_config(TrainConfig, yaml_text=state["config"])
    changes = {k: v for k, v in (("attn_backend", attn_backend), ("rope_extrapolation", rope_extrapolation)) if v}
    model, encoder = build_models(cfg, **changes)
    model.load_state_dict(model_state)
    if "text" in state:
        encoder.load_state_dict(state["text"])
    if weights == "ema":  # the EMA holds the floating-point entries of {"dit": ..., "text": ...}
        for prefix, module in (("dit.", model), ("text.", encoder)):
            shadow = {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
            if shadow:  # not strict: the EMA skips integer buffers, but it may hold nothing unknown
                unexpected = module.load_state_dict(shadow, strict=False).unexpected_keys
                if unexpected:
                    raise ValueError(f"{ckpt}: EMA entries the model does not have: {unexpected[:5]}")
    vae = None
    if cfg.vae is not None:
        from patchpack.model.vae_checkpoint import load_vae

        vae = load_vae(cfg.vae)
    return LoadedRun(model.eval(), encoder.eval(), cfg, step, ckpt, weights, vae)


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    prompt: str
    frames: int
    height: int
    width: int
    tag: str = ""  # free text shown with the result, e.g. "trained size" or "unseen aspect 1:3"

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
    bad = [f for f in frames if f < 1]
    if bad:
        raise ValueError(f"frames must be >= 1, got {bad}")
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

    grids = model_grids(run, reqs, max_tokens=max_tokens)
    with tqdm(total=steps, desc="sampling", unit="step", disable=not progress) as bar:
        videos = generate(run.model, run.encoder, [r.prompt for r in reqs], grids, steps=steps, cfg_scale=cfg_scale,
                          seed=seed, max_tokens=max_tokens, autoencoder=run.vae, flow=run.config.flow,
                          on_step=lambda k: bar.update(1), solver=solver)
    return [to_frames(v) for v in videos]


# --------------------------------------------------------------------------- files


def write_outputs(out_dir: str | Path, reqs: Sequence[Request], videos: Sequence[np.ndarray], *, fps: float,
                  title: str = "patchpack samples", intro: str = "", notes: Sequence[list[str]] | None = None,
                  info: dict | None = None, references: Sequence[np.ndarray] | None = None) -> dict:
    """mp4/gif/png per video, contact_sheet.png, index.html and manifest.json; returns the manifest.

    references: a real clip per request (same caption and size), written as ref_<stem>.* and
    shown beside its sample in the gallery and on the contact sheet.
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
        items.append({**asdict(r), "files": {k: v for k, v in asdict(files).items() if v}})
        ref = None
        if references is not None:
            ref = write_video_files(out, f"ref_{stem}", references[i], fps=fps)
            items[-1]["reference"] = {k: v for k, v in asdict(ref).items() if v}
        extra = [r.tag] if r.tag else []
        gallery.append(GalleryItem(r.prompt, r.grid, files, extra + (list(notes[i]) if notes else []), ref))
    labels = [f"{r.frames}x{r.height}x{r.width}  {r.prompt}" for r in reqs]
    rows = list(videos)
    if references is not None:  # each frame: generated above reference, a white line between
        labels = [f"{label}   (top: generated, bottom: reference)" for label in labels]
        rows = [np.concatenate([v, np.full_like(v[:, :1], 255), ref], axis=1) for v, ref in zip(videos, references)]
    contact_sheet(out / "contact_sheet.png", rows, labels)
    write_gallery(out / "index.html", gallery, title=title, intro=intro)
    manifest = {"items": items, **(info or {})}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

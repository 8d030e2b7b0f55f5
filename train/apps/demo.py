"""`patchpack demo`: the whole system on a CPU, from nothing to a gallery of generated videos.

    synth shape clips (held-out prompts excluded) -> encode them once with the demo VAE
    (latent shards) -> train the DiT in latent space (configs/demo.yaml, `patchpack train`'s
    loop over PackedStream) -> generate every held-out prompt at trained and unseen sizes in
    one packed pass per sampling step -> decode -> a prompted row (image-to-video and
    extension, prompted_row.py) -> mp4/gif/png beside a real clip of each caption, contact
    sheet, HTML gallery -> attribute evaluator, residual-noise check, continuation -> summary

The VAE is the one shipped with the package (model/assets/vae_demo, made by
`patchpack train-vae configs/vae_demo_shapes.yaml`, docs/vae.md) unless `vae` names another.
Every stage reuses its output when it is already there (the data and latent directories, the
run's checkpoints via resume=auto), so running the demo again finishes an interrupted run
instead of starting over.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from patchpack.train.data.synth import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SPEEDS,
    shape_caption,
    synth,
)
from patchpack.train.loops.config import TrainConfig
from patchpack.train.loops.metrics import read_metrics
from patchpack.train.options import load_config

from .generate import Request, load_run, sample, write_outputs
from .prompted_row import format_continuation, prompted_row


def shipped_vae() -> Path:
    """The demo VAE that ships inside the installed package (patchpack.model assets)."""
    from importlib.resources import files

    return Path(str(files("patchpack.model") / "assets" / "vae_demo"))


@dataclass
class DemoOptions:
    out: str = "runs/demo"  # data/, latents/, run/, samples/ and summary.json go here
    config: str | None = None  # the training run (a TrainConfig YAML); None: the checkout's configs/demo.yaml
    overrides: list[str] = field(default_factory=list)  # dotlist overrides of the training config
    vae: str | None = None  # an exported VAE directory; None: the demo VAE shipped with the package
    # --- the dataset: shape clips only, objects large enough to read at 32 px (synth's defaults,
    #     digits, photos and smaller objects, stay what `patchpack synth` writes)
    num_samples: int = 2000  # synthetic clips written once to out/data
    min_side: int = 48  # source sizes in pixels; every clip is shrunk to clip_pixels anyway
    max_side: int = 128
    photo_fraction: float = 0.0
    digit_fraction: float = 0.0
    object_scale: tuple[float, float] = (0.4, 0.55)  # object side / short side of the frame
    # --- latents: each clip fitted to the VAE once (aspect kept, sides multiples of its factor)
    clip_pixels: int = 32 * 32  # pixels per frame: 8x8 latents, 4x4 tokens at patch 2
    clip_frames: int = 9  # 1 + 2 x 4: 3 latent frames
    # --- generation and evaluation
    prompts: int = 8  # held-out shape prompts, each generated at every demo size
    sample_steps: int = 25
    solver: str = "euler"  # or "heun" (model/sampler.py)
    cfg_scale: float = 4.0
    seed: int = 0
    # --- length: None trains the config's loop.steps; a number of minutes (the whole demo, on
    #     the reference 2-core machine) sets loop.steps = (minutes - fixed_minutes) * steps_per_minute,
    #     and caps the training at that many minutes (loop.time_limit), so a slower machine stops on time
    minutes: float | None = None
    steps_per_minute: float = 200.0  # 204 measured on an idle 2-core machine (2,400 steps in 705 s): docs/generation.md
    fixed_minutes: float = 2.0  # data, latents, generation and evaluation

    def __post_init__(self) -> None:  # before any stage runs, not after the training
        for name in ("num_samples", "prompts", "sample_steps", "clip_pixels", "clip_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not -math.inf < self.cfg_scale < math.inf:
            raise ValueError(f"cfg_scale must be a finite number, got {self.cfg_scale}")
        if self.minutes is not None and not 0 < self.minutes < math.inf:
            raise ValueError(f"minutes must be a positive number, got {self.minutes}")
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"solver must be 'euler' or 'heun', got {self.solver!r}")

    def quick(self) -> DemoOptions:
        """A minute-long smoke run of every stage (the pictures are noise): few clips, a 1-block
        DiT, 4 steps, 2 prompts, 3 sampling steps. The options' own overrides still apply last."""
        return replace(
            self, num_samples=min(self.num_samples, 48), prompts=min(self.prompts, 2),
            sample_steps=min(self.sample_steps, 3), minutes=None,
            overrides=["loop.steps=4", "loop.log_every=1", "loop.ckpt_every=1000", "model.depth=1",
                       "model.hidden=64", "model.heads=2", "optim.warmup=1", "loop.threads=1",
                       "loop.num_workers=0", *self.overrides])


def default_config() -> Path:
    """configs/demo.yaml of the source checkout this package runs from; ValueError when absent
    (an installed wheel carries no configs/: pass a config explicitly)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    if not path.is_file():
        raise ValueError(f"configs/demo.yaml not found next to the package ({path}); pass --config")
    return path


def demo_vae_path(vae: str | None) -> Path:
    """The VAE the demo encodes and decodes with; ValueError if it is not there."""
    path = Path(vae) if vae is not None else shipped_vae()
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"no exported VAE at {path} (expected model.safetensors + vae.json)")
    return path


def demo_subjects(n: int, seed: int) -> list[dict]:
    """n distinct shape subjects, every shape, colour, background, direction and speed shown as
    evenly as n allows: each pick is the (seeded) first of all combinations whose attribute
    values have been used least so far."""
    rng = random.Random(seed)
    names = ("obj", "colour", "background", "direction", "speed")
    combos = list(itertools.product(SHAPES, COLOURS, BACKGROUNDS, DIRECTIONS, SPEEDS))
    rng.shuffle(combos)
    used: dict[tuple[str, str], int] = {}
    out = []
    for _ in range(min(n, len(combos))):
        best = min(combos, key=lambda c: sum(used.get((k, v), 0) for k, v in zip(names, c)))
        combos.remove(best)
        for k, v in zip(names, best):
            used[(k, v)] = used.get((k, v), 0) + 1
        out.append(dict(zip(names, best)))
    return out


def prompt_for(subject: dict, frames: int) -> str:
    """The training caption of `subject`: with its motion for a clip, without for an image."""
    motion = {"direction": subject["direction"], "speed": subject["speed"]} if frames > 1 else {}
    return shape_caption(subject["obj"], subject["colour"], subject["background"], **motion)


def held_out_prompts(subjects: list[dict]) -> set[str]:
    """Every caption the demo evaluates (clip and image forms): none may be in its training data."""
    return {prompt_for(s, t) for s in subjects for t in (1, 2)}


def demo_sizes(side: int, frames: int, *, unit: int, temporal: int, pt: int = 1) -> list[tuple[int, int, int, str]]:
    """(T, H, W, tag) in pixels: the trained clip and image, then unseen ones. side: the trained
    clip's side (a multiple of `unit`, the VAE factor x patch); frames: 1 + k * temporal;
    pt: the temporal patch, which the unseen duration's latent frames must be a multiple of."""
    latent = 1 + (frames - 1) // temporal  # latent frames of the trained clip
    longer_latent = -(-(2 * latent - 1) // pt) * pt  # about twice the duration, whole patches
    longer = 1 + (longer_latent - 1) * temporal
    wide_h = unit * max(1, round(0.75 * side / unit))
    return [
        (frames, side, side, "trained size"),
        (1, side, side, "trained size (image)"),
        (longer, side, side, f"unseen duration: {longer} frames"),
        (frames, wide_h, 3 * wide_h, "unseen aspect 3:1"),
        (frames, side + unit, side + unit, "unseen resolution"),
    ]


def train_steps(opts: DemoOptions) -> int | None:
    """loop.steps for `--minutes` (None: the config's)."""
    if opts.minutes is None:
        return None
    if opts.minutes <= opts.fixed_minutes:
        raise ValueError(f"--minutes {opts.minutes} leaves no time to train: the data, latents, generation "
                         f"and evaluation take about {opts.fixed_minutes} minutes")
    return max(1, round((opts.minutes - opts.fixed_minutes) * opts.steps_per_minute))


def write_data(opts: DemoOptions, data: Path, subjects: list[dict]) -> None:
    """The demo's pixel shards, written to a temporary directory and moved into place."""
    tmp = data.with_name(data.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    synth(tmp, num_samples=opts.num_samples, seed=opts.seed, min_side=opts.min_side, max_side=opts.max_side,
          photo_fraction=opts.photo_fraction, digit_fraction=opts.digit_fraction,
          object_scale=opts.object_scale, exclude=held_out_prompts(subjects))
    tmp.rename(data)


def write_latents(opts: DemoOptions, data: Path, latents: Path, vae: Path) -> None:
    from patchpack.train.data import DataConfig, encode_latent_shards

    tmp = latents.with_name(latents.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    decode = DataConfig(fps=8.0, max_seconds=None, max_frames=opts.clip_frames)
    encode_latent_shards(str(data), vae, tmp, data=decode, max_pixels=opts.clip_pixels,
                         max_frames=opts.clip_frames, threads=1)
    tmp.rename(latents)


def run_demo(opts: DemoOptions, *, data_only: bool = False) -> dict:
    from patchpack.train.loops import train  # the data stack and torch start here

    out = Path(opts.out)
    data, latents, run_dir, samples_dir = out / "data", out / "latents", out / "run", out / "samples"
    vae = demo_vae_path(opts.vae)
    subjects = demo_subjects(opts.prompts, opts.seed)
    timings: dict[str, float] = {}
    load = {"start": _load()}
    t0 = time.perf_counter()

    # 1. data, without the held-out prompts
    if data.is_dir():
        print(f"[1/5] data: reusing the shards in {data}")
    else:
        print(f"[1/5] data: writing {opts.num_samples} synthetic clips to {data}")
        write_data(opts, data, subjects)
    timings["data"] = time.perf_counter() - t0
    if data_only:
        return {"data": str(data)}

    # 2. latents: every clip encoded once
    t = time.perf_counter()
    if latents.is_dir():
        print(f"[2/5] latents: reusing {latents}")
    else:
        print(f"[2/5] latents: encoding the clips with {vae} to {latents}")
        write_latents(opts, data, latents, vae)
    timings["latents"] = time.perf_counter() - t

    # 3. train
    steps = train_steps(opts)
    extra = [] if steps is None else [f"loop.steps={steps}",
                                      f"loop.time_limit={60 * (opts.minutes - opts.fixed_minutes):.0f}"]
    config = opts.config if opts.config is not None else default_config()
    cfg = load_config(TrainConfig, config, [f"run_dir={run_dir}", f"data.shards=[{latents}]", f"vae={vae}",
                                            *extra, *opts.overrides])
    print(f"[3/5] train: {cfg.loop.steps} steps of the DiT (width {cfg.model.hidden}, depth {cfg.model.depth}) "
          f"into {run_dir} (resumes if interrupted)")
    t = time.perf_counter()
    summary = train(cfg)
    timings["train"] = time.perf_counter() - t

    # 4. generate, everything in one packed pass per sampling step
    run = load_run(run_dir)
    vcfg = run.vae.config
    unit = vcfg.spatial * max(run.patch[1:])
    side = max(unit, int(math.sqrt(opts.clip_pixels)) // unit * unit)
    frames = 1 + (opts.clip_frames - 1) // vcfg.temporal * vcfg.temporal
    sizes = demo_sizes(side, frames, unit=unit, temporal=vcfg.temporal, pt=run.patch[0])
    reqs = [Request(prompt_for(s, t), t, h, w, tag) for s in subjects for t, h, w, tag in sizes]
    print(f"[4/5] generate: {len(subjects)} held-out prompts x {len(sizes)} sizes, {opts.sample_steps} "
          f"{opts.solver} steps, cfg {opts.cfg_scale}")
    t = time.perf_counter()
    videos = sample(run, reqs, steps=opts.sample_steps, cfg_scale=opts.cfg_scale, seed=opts.seed, progress=True,
                    solver=opts.solver)
    row = prompted_row(run, side=side, frames=frames, captions=[prompt_for(s, frames) for s in subjects],
                       steps=opts.sample_steps, cfg_scale=opts.cfg_scale, seed=opts.seed,
                       object_scale=opts.object_scale, progress=True)
    timings["generate"] = time.perf_counter() - t

    # 5. evaluate against the captions and against real clips, write everything
    result = _evaluate_and_write(opts, out, samples_dir, run, reqs, videos, row, summary, timings, load, t0)
    print("[5/5] evaluate")
    print("\n".join(result["eval_table"]))
    print(format_continuation(row.report))
    print(_summary_text(result))
    return result


def _evaluate_and_write(opts, out, samples_dir, run, reqs, videos, row, summary, timings, load, t0) -> dict:
    from .evaluate import evaluate, format_report
    from .reference import hf_energy, reference_clip

    t = time.perf_counter()
    refs = [reference_clip(r.prompt, r.frames, r.height, r.width, seed=opts.seed + i, object_scale=opts.object_scale)
            for i, r in enumerate(reqs)]
    groups = ["trained" if r.tag.startswith("trained") else "unseen" for r in reqs]
    report = evaluate([(v, r.prompt, g) for v, r, g in zip(videos, reqs, groups)])
    noise = noise_table(reqs, [hf_energy(v) for v in videos], [hf_energy(r) for r in refs])
    notes = [[f"{k} {'ok' if ok else 'wrong'}" for k, ok in res["scores"].items()] +
             [f"high-frequency energy {hf_energy(v):.1f} (reference {hf_energy(r):.1f})"]
             for res, v, r in zip(report["results"], videos, refs)]
    records = read_metrics(Path(run.config.run_dir) / "metrics.jsonl")
    curve = loss_curve(records, out / "loss_curve.png")
    stats = train_stats(records)
    table = format_report(report).splitlines()
    intro = (f"{len(reqs)} samples from {run.checkpoint} ({run.weights} weights, step {run.step}), "
             f"{opts.sample_steps} {opts.solver} steps, CFG {opts.cfg_scale}, each beside a real clip of its caption. "
             f"The prompts were held out of training; sizes are pixels.")
    info = {"train": summary, "train_stats": stats, "eval": report, "eval_table": table, "noise": noise,
            "continuation": row.report, "sample_steps": opts.sample_steps, "solver": opts.solver,
            "cfg_scale": opts.cfg_scale}
    write_outputs(samples_dir, reqs + row.reqs, videos + row.videos, fps=run.fps, title="patchpack demo",
                  intro=intro, notes=notes + row.notes, info=info, references=refs + [None] * len(row.reqs))
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    load["end"] = _load()
    result = {"out": str(out), "gallery": str(samples_dir / "index.html"),
              "contact_sheet": str(samples_dir / "contact_sheet.png"), "loss_curve": curve,
              "timings": {k: round(v, 1) for k, v in timings.items()}, "load_average": load,
              "held_out_prompts": sorted({r.prompt for r in reqs}), **stats,
              "eval_table": table, "noise": noise, "eval": report, "continuation": row.report}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def noise_table(reqs: list[Request], generated: list[float], reference: list[float]) -> dict[str, dict]:
    """Per size tag: mean high-frequency energy of the generated clips, of the real clips of the
    same captions and sizes, and their ratio (the goal: within 2x)."""
    out: dict[str, dict] = {}
    for r, g, ref in zip(reqs, generated, reference):
        row = out.setdefault(r.tag, {"size": [r.frames, r.height, r.width], "generated": [], "reference": []})
        row["generated"].append(g)
        row["reference"].append(ref)
    for row in out.values():
        row["generated"] = round(sum(row["generated"]) / len(row["generated"]), 2)
        row["reference"] = round(sum(row["reference"]) / len(row["reference"]), 2)
        row["ratio"] = round(row["generated"] / max(row["reference"], 1e-6), 2)
    return out


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not every platform has it
        return None


def train_stats(records: list[dict]) -> dict:
    """Loss at the start and end, mean fill, useful tokens/s and samples/s over the logged windows."""
    rows = [r for r in records if "loss" in r]
    if not rows:
        return {}
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"steps": rows[-1]["step"], "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "fill": round(mean("fill"), 4), "useful_tokens_per_s": round(mean("tokens_per_s"), 1),
            "samples_per_s": round(mean("samples_per_s"), 1)}


def loss_curve(records: list[dict], path: Path) -> str | None:
    """loss against step as a PNG (None when matplotlib is missing or nothing was logged)."""
    rows = [r for r in records if "loss" in r]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="flow loss (per valid token)", title="demo training loss", yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _summary_text(r: dict) -> str:
    tm = r["timings"]
    lines = ["", f"done in {tm['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in tm.items() if k != "total")
             + f"); load average {r['load_average']}"]
    if "loss_first" in r:
        lines.append(f"  loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} over {r['steps']} steps; "
                     f"packing fill {r['fill']:.1%}; {r['useful_tokens_per_s']:,.0f} useful tokens/s, "
                     f"{r['samples_per_s']:.0f} clips/s")
    for tag, row in r["noise"].items():
        lines.append(f"  high-frequency energy {tag}: {row['generated']:.1f} vs {row['reference']:.1f} real "
                     f"({row['ratio']:.2f}x)")
    lines += [f"  gallery        {r['gallery']}", f"  contact sheet  {r['contact_sheet']}"]
    if r["loss_curve"]:
        lines.append(f"  loss curve     {r['loss_curve']}")
    lines.append(f"  summary        {Path(r['out']) / 'summary.json'}")
    return "\n".join(lines)

"""`patchpack demo`: the whole system on a CPU, from nothing to a gallery of generated videos.

    synth (embedded data) -> train the tiny DiT (configs/demo.yaml) -> generate every prompt at
    trained and unseen sizes in one packed pass per Euler step -> a prompted row (image-to-video
    and extension, prompted_row.py) -> mp4/gif/png, contact sheet, HTML gallery -> attribute
    evaluator and continuation measure -> loss curve -> summary

Every stage reuses its output when it is already there (the data directory, the run's
checkpoints via resume=auto), so running the demo again finishes an interrupted run
instead of starting over.
"""

from __future__ import annotations

import json
import math
import random
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


@dataclass
class DemoOptions:
    out: str = "runs/demo"  # data/, run/, samples/ and summary.json go here
    config: str | None = None  # the training run (a TrainConfig YAML); None: the checkout's configs/demo.yaml
    overrides: list[str] = field(default_factory=list)  # dotlist overrides of the training config
    num_samples: int = 1200  # synthetic clips written once to out/data
    min_side: int = 48  # synthetic clip sizes in pixels: the packer's budget resizes them down
    max_side: int = 128  # anyway, so larger sources only cost decode time
    photo_fraction: float = 0.2  # photo pans/zooms among the clips; the rest are shapes and digits
    prompts: int = 8  # evaluated shape/digit prompts, each generated at every demo size
    sample_steps: int = 25  # Euler steps
    cfg_scale: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:  # before any stage runs, not after the training
        for name in ("num_samples", "prompts", "sample_steps"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not -math.inf < self.cfg_scale < math.inf:
            raise ValueError(f"cfg_scale must be a finite number, got {self.cfg_scale}")

    def quick(self) -> DemoOptions:
        """A minute-long smoke run of every stage (the pictures are noise): few clips, a 1-block
        DiT, 4 steps, 2 prompts, 3 Euler steps. The options' own overrides still apply last."""
        return replace(
            self, num_samples=min(self.num_samples, 24), prompts=min(self.prompts, 2),
            sample_steps=min(self.sample_steps, 3),
            overrides=["loop.steps=4", "loop.log_every=1", "loop.ckpt_every=1000", "model.depth=1",
                       "model.hidden=64", "model.heads=2", "optim.warmup=1", "loop.threads=1", *self.overrides])


def default_config() -> Path:
    """configs/demo.yaml of the source checkout this package runs from; ValueError when absent
    (an installed wheel carries no configs/: pass a config explicitly)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    if not path.is_file():
        raise ValueError(f"configs/demo.yaml not found next to the package ({path}); pass --config")
    return path


def demo_sizes(patch: tuple[int, int, int], max_tokens: int, max_frames: int) -> list[tuple[int, int, int, str]]:
    """(T, H, W, tag) the demo generates: the trained clip and image sizes, then unseen ones."""
    pt, ph, pw = patch
    side = _square_side(max_tokens // max(max_frames // pt, 1), ph, pw)  # the budget's square clip
    img = _square_side(max_tokens, ph, pw)
    wide_h = ph * max(1, round(side / ph / 1.7))
    return [
        (max_frames, side, side, "trained size"),
        (1, img, img, "trained size (image)"),
        (2 * max_frames, side, side, f"unseen duration: {2 * max_frames} frames"),
        (max_frames, wide_h, 3 * wide_h, "unseen aspect 3:1"),
        (max_frames, side + 2 * ph, side + 2 * ph, "unseen resolution"),
    ]


def _square_side(tokens: int, ph: int, pw: int) -> int:
    n = max(int(tokens ** 0.5), 1)
    return n * max(ph, pw)


def demo_subjects(n: int, seed: int) -> list[dict]:
    """n random shape/digit subjects (object, colour, background, direction, speed), seeded."""
    rng = random.Random(seed)
    return [{"obj": rng.randrange(10) if rng.random() < 0.25 else rng.choice(SHAPES),
             "colour": rng.choice(list(COLOURS)), "background": rng.choice(list(BACKGROUNDS)),
             "direction": rng.choice(list(DIRECTIONS)), "speed": rng.choice(list(SPEEDS))} for _ in range(n)]


def prompt_for(subject: dict, frames: int) -> str:
    """The training caption of `subject`: with its motion for a clip, without for an image."""
    motion = {"direction": subject["direction"], "speed": subject["speed"]} if frames > 1 else {}
    return shape_caption(subject["obj"], subject["colour"], subject["background"], **motion)


def run_demo(opts: DemoOptions) -> dict:
    from patchpack.train.loops.dit_loop import train  # the data stack and torch start here

    out = Path(opts.out)
    data, run_dir, samples_dir = out / "data", out / "run", out / "samples"
    t0 = time.perf_counter()

    # 1. data
    if any(data.glob("*.tar")):
        print(f"[1/4] data: reusing the shards in {data}")
    else:
        print(f"[1/4] data: writing {opts.num_samples} synthetic clips to {data}")
        synth(data, num_samples=opts.num_samples, seed=opts.seed, min_side=opts.min_side, max_side=opts.max_side,
              photo_fraction=opts.photo_fraction)

    # 2. train
    config = opts.config if opts.config is not None else default_config()
    cfg = load_config(TrainConfig, config, [f"run_dir={run_dir}", f"data.shards=[{data}]", *opts.overrides])
    print(f"[2/4] train: {cfg.loop.steps} steps of the DiT (width {cfg.model.hidden}, depth {cfg.model.depth}) into {run_dir} "
          f"(resumes if interrupted)")
    t_train = time.perf_counter()
    summary = train(cfg)
    train_s = time.perf_counter() - t_train

    # 3. generate, everything in one packed pass per Euler step
    run = load_run(run_dir)
    p = cfg.packer
    budget = p.max_tokens_per_sample or p.max_len
    frames = min(f for f in (p.max_frames, cfg.data.max_frames, 8) if f)  # the trained clip length (8 if uncapped)
    sizes = demo_sizes(run.patch, budget, frames)
    subjects = demo_subjects(opts.prompts, opts.seed)
    reqs = [Request(prompt_for(sub, t), t, h, w, tag) for sub in subjects for t, h, w, tag in sizes]
    print(f"[3/4] generate: {len(subjects)} prompts x {len(sizes)} sizes, {opts.sample_steps} Euler steps, "
          f"cfg {opts.cfg_scale}")
    t_gen = time.perf_counter()
    videos = sample(run, reqs, steps=opts.sample_steps, cfg_scale=opts.cfg_scale, seed=opts.seed, progress=True)
    frames_, side = sizes[0][:2]  # the trained clip size
    row = prompted_row(run, side=side, frames=frames_, subjects=opts.prompts, steps=opts.sample_steps,
                       cfg_scale=opts.cfg_scale, seed=opts.seed, progress=True)
    gen_s = time.perf_counter() - t_gen

    # 4. evaluate and write everything
    from .evaluate import evaluate, format_report

    groups = ["trained" if r.tag.startswith("trained") else "unseen" for r in reqs]
    report = evaluate([(v, r.prompt, g) for v, r, g in zip(videos, reqs, groups)])
    notes = [[f"{k} {'ok' if ok else 'wrong'}" for k, ok in res["scores"].items()] for res in report["results"]]
    records = read_metrics(run_dir / "metrics.jsonl")
    curve = loss_curve(records, out / "loss_curve.png")
    stats = train_stats(records)
    info = {"train": summary, "train_stats": stats, "eval": report, "continuation": row.report,
            "sample_steps": opts.sample_steps, "cfg_scale": opts.cfg_scale}
    intro = (f"{len(reqs) + len(row.reqs)} samples from {run.checkpoint} ({run.weights} weights, step {run.step}), "
             f"{opts.sample_steps} Euler steps, CFG {opts.cfg_scale}. Sizes are pixels; the model trained on "
             f"clips of at most {budget} tokens.")
    write_outputs(samples_dir, reqs + row.reqs, videos + row.videos, fps=run.fps, title="patchpack demo", intro=intro,
                  notes=notes + row.notes, info=info)
    result = {"out": str(out), "gallery": str(samples_dir / "index.html"),
              "contact_sheet": str(samples_dir / "contact_sheet.png"), "loss_curve": curve,
              "train_seconds": round(train_s, 1), "generate_seconds": round(gen_s, 1),
              "total_seconds": round(time.perf_counter() - t0, 1), **stats, "eval": report,
              "continuation": row.report}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("[4/4] evaluate")
    print(format_report(report))
    print(format_continuation(row.report))
    print(_summary_text(result))
    return result


def train_stats(records: list[dict]) -> dict:
    """Loss at the start and end, mean fill and useful tokens/s over the logged windows."""
    rows = [r for r in records if "loss" in r]
    if not rows:
        return {}
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"steps": rows[-1]["step"], "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "fill": round(mean("fill"), 4), "useful_tokens_per_s": round(mean("tokens_per_s"), 1)}


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
    lines = [
        "",
        f"done in {r['total_seconds']:.0f} s (training {r['train_seconds']:.0f} s, generation {r['generate_seconds']:.0f} s)",
    ]
    if "loss_first" in r:
        lines.append(f"  loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} over {r['steps']} steps; "
                     f"packing fill {r['fill']:.1%}; {r['useful_tokens_per_s']:,.0f} useful tokens/s")
    lines += [f"  gallery        {r['gallery']}", f"  contact sheet  {r['contact_sheet']}"]
    if r["loss_curve"]:
        lines.append(f"  loss curve     {r['loss_curve']}")
    lines.append(f"  summary        {Path(r['out']) / 'summary.json'}")
    return "\n".join(lines)

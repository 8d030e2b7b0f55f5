"""The `patchpack` command line.

Each subcommand imports its heavy dependencies lazily, so `patchpack info` works
on a machine without PyAV or the text extras. User errors (a bad size, a missing
file) end with a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from pathlib import Path

BENCHMARKS = ("packing", "attention", "pipeline", "e2e")


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> None:
    import platform

    import torch

    import patchpack

    print(f"patchpack {patchpack.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    print(f"cuda available: {torch.cuda.is_available()}")
    for mod in ("numpy", "av", "webdataset", "omegaconf", "safetensors", "triton", "flash_attn", "xformers"):
        print(f"  {mod:12s} {_version_of(mod)}")
    from patchpack.kernels import info

    print()
    info.main()


def _version_of(module: str) -> str:
    from importlib import import_module
    from importlib.util import find_spec

    if find_spec(module) is None:
        return "not installed"
    try:
        return str(getattr(import_module(module), "__version__", "installed"))
    except ImportError as e:  # installed but broken, e.g. a CUDA-only wheel
        return f"installed, import fails: {e}"


# --------------------------------------------------------------------------- bench


def _benchmarks_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    if not here.is_dir():
        raise UserError(f"benchmarks/ not found next to the package ({here}); run from a source checkout")
    return here


def cmd_bench(args: argparse.Namespace) -> None:
    script = _benchmarks_dir() / f"{args.which}.py"
    if not script.exists():
        raise UserError(f"no benchmark named {args.which!r} (looked for {script})")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")


# --------------------------------------------------------------------------- data


def cmd_synth(args: argparse.Namespace) -> None:
    from patchpack.train.synth import synth

    try:
        synth(args.out, num_samples=args.num_samples, seed=args.seed, shard_size=args.shard_size)
    except ValueError as e:
        raise UserError(str(e)) from None


def cmd_make_shards(args: argparse.Namespace) -> None:
    from patchpack.train.shards import make_shards

    for path in (args.src, args.captions):
        if not Path(path).exists():
            raise UserError(f"not found: {path}")
    try:
        make_shards(args.src, args.captions, args.out, shard_size_mb=args.shard_size_mb, per_caption=args.per_caption)
    except ValueError as e:
        raise UserError(str(e)) from None


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> None:
    from patchpack.train.options import ConfigError, load_config
    from patchpack.train.train_config import TrainConfig
    from patchpack.train.trainer import train

    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None
    summary = train(cfg)
    if summary.get("rank", 0) == 0:  # under torchrun every rank returns; one prints
        print(summary)


def cmd_train_vae(args: argparse.Namespace) -> None:
    from patchpack.train.options import ConfigError, load_config
    from patchpack.train.vae_config import VAETrainConfig
    from patchpack.train.vae_trainer import train_vae

    try:
        cfg = load_config(VAETrainConfig, args.config, args.overrides)
        summary = train_vae(cfg)
    except (ConfigError, ValueError) as e:
        raise UserError(str(e)) from None
    print(summary)


def cmd_encode_latents(args: argparse.Namespace) -> None:
    from patchpack.train.config import DataConfig
    from patchpack.train.latents import encode_latent_shards

    for path in (args.src, args.vae):
        if not Path(path).exists():
            raise UserError(f"not found: {path}")
    try:
        data = DataConfig(fps=args.fps, max_seconds=args.max_seconds, max_frames=args.max_frames)
        encode_latent_shards(args.src, args.vae, args.out, data=data, max_pixels=args.max_pixels,
                             max_frames=args.max_frames, chunk=args.chunk, shard_size=args.shard_size,
                             threads=args.threads)
    except ValueError as e:
        raise UserError(str(e)) from None


# --------------------------------------------------------------------------- demo, generate, eval


def cmd_demo(args: argparse.Namespace) -> None:
    from patchpack.train.demo import DemoOptions, run_demo
    from patchpack.train.options import ConfigError

    config = Path(args.config) if args.config else _source_file("configs/demo.yaml")
    opts = DemoOptions(out=args.out, config=str(config), overrides=args.overrides, vae=args.vae,
                       prompts=args.prompts, sample_steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                       minutes=args.minutes, solver=args.solver)
    if args.num_samples is not None:
        opts.num_samples = args.num_samples
    if args.quick:  # a minute-long smoke run of every stage; the pictures are noise
        opts.num_samples = args.num_samples or 24
        opts.minutes = None
        opts.prompts, opts.sample_steps = min(args.prompts, 2), min(args.steps, 3)
        opts.overrides = ["loop.steps=4", "loop.log_every=1", "loop.ckpt_every=1000", "model.depth=1",
                          "model.hidden=64", "model.heads=2", "optim.warmup=1", "loop.threads=1", *args.overrides]
    try:
        run_demo(opts, data_only=args.data_only)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def _source_file(rel: str) -> Path:
    path = Path(__file__).resolve().parent.parent / rel
    if not path.is_file():
        raise UserError(f"{rel} not found next to the package ({path}); pass --config or run from a source checkout")
    return path


def cmd_generate(args: argparse.Namespace) -> None:
    from patchpack.train.generate import load_run, parse_size, requests, sample, write_outputs

    try:
        sizes = [parse_size(s) for s in args.size]
        reqs = requests(args.prompt, sizes=sizes, frames=args.frames or [8])
        run = load_run(args.ckpt, weights=args.weights, rope_extrapolation=args.rope)
        t0 = time.perf_counter()
        videos = sample(run, reqs, steps=args.steps, cfg_scale=args.cfg, seed=args.seed, progress=True,
                        solver=args.solver)
    except ValueError as e:
        raise UserError(str(e)) from None
    dt = time.perf_counter() - t0
    write_outputs(args.out, reqs, videos, fps=run.fps,
                  intro=f"{run.checkpoint} ({run.weights} weights), {args.steps} steps, CFG {args.cfg}, seed {args.seed}",
                  info={"checkpoint": str(run.checkpoint), "steps": args.steps, "cfg_scale": args.cfg, "seed": args.seed})
    print(f"generated {len(reqs)} videos in {dt:.1f} s from {run.checkpoint} (step {run.step})")
    print(f"  {Path(args.out) / 'index.html'}  (gallery)\n  {Path(args.out) / 'contact_sheet.png'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from patchpack.train.evaluate import evaluate_dir, format_report

    if not (Path(args.dir) / "manifest.json").is_file():
        raise UserError(f"{args.dir} has no manifest.json (write one with patchpack generate or patchpack demo)")
    try:
        report = evaluate_dir(args.dir)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    print(format_report(report))
    print(f"  written to {Path(args.dir) / 'eval.json'}")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patchpack", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="versions, torch threads, attention backends with reasons")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="write the embedded synthetic dataset as webdataset shards")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--num-samples", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("make-shards", help="convert a folder of videos/images + captions file into shards")
    s.add_argument("src", help="folder with the media files")
    s.add_argument("--captions", required=True, help='JSON/JSONL: [{"file": "video0.mp4", "captions": ["..."]}]')
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--shard-size-mb", type=float, default=256.0)
    s.add_argument("--per-caption", action="store_true", help="one sample per caption instead of all captions per sample")
    s.set_defaults(func=cmd_make_shards)

    s = sub.add_parser("train", help="train the packed DiT from a YAML config plus key=value overrides")
    s.add_argument("config", help="YAML file, e.g. configs/demo.yaml")
    s.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. optim.lr=3e-4 loop.steps=50")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("train-vae", help="train the causal video VAE from a YAML config plus key=value overrides")
    s.add_argument("config", help="YAML file, e.g. configs/vae_demo.yaml")
    s.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. loop.steps=200")
    s.set_defaults(func=cmd_train_vae)

    s = sub.add_parser("encode-latents", help="pre-encode pixel shards into latent shards with a trained VAE")
    s.add_argument("src", help="pixel shards: a directory, a path or a brace pattern")
    s.add_argument("--vae", required=True, help="an exported VAE directory or a VAE training checkpoint")
    s.add_argument("--out", required=True, help="output directory for the latent shards")
    s.add_argument("--fps", type=float, default=8.0, help="resample videos to this rate before encoding")
    s.add_argument("--max-seconds", type=float, default=2.0, help="clip length cap")
    s.add_argument("--max-frames", type=int, default=None, help="frame cap (rounded down to 1 + k x temporal)")
    s.add_argument("--max-pixels", type=int, default=None, help="pixels per frame cap (aspect kept)")
    s.add_argument("--chunk", type=int, default=None, help="latent frames per encode step (long videos)")
    s.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    s.add_argument("--threads", type=int, default=None, help="torch threads")
    s.set_defaults(func=cmd_encode_latents)

    s = sub.add_parser("demo", help="synth -> train the tiny DiT on CPU -> generate at many sizes -> gallery + eval")
    s.add_argument("--out", default="runs/demo", help="data/, run/, samples/ and summary.json go here")
    s.add_argument("--config", default=None, help="training config (default: configs/demo.yaml of the checkout)")
    s.add_argument("--num-samples", type=int, default=None, help="synthetic clips to write (default 2000)")
    s.add_argument("--prompts", type=int, default=8, help="held-out prompts, each generated at every demo size")
    s.add_argument("--steps", type=int, default=25, help="sampling steps")
    s.add_argument("--solver", choices=("euler", "heun"), default="euler",
                   help="heun: second order, two model calls per step")
    s.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--minutes", type=float, default=None,
                   help="the whole demo's length on a 2-core machine: sets the training steps (default: the config's, ~15)")
    s.add_argument("--vae", default=None, help="an exported VAE directory (default: the demo VAE shipped with patchpack)")
    s.add_argument("--data-only", action="store_true", help="write the demo's synthetic shards to OUT/data and stop")
    s.add_argument("--quick", action="store_true", help="a tiny run of every stage (about a minute; noise out)")
    s.add_argument("overrides", nargs="*", help="training config overrides, e.g. loop.steps=500")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("generate", help="sample videos from a training run at any sizes")
    s.add_argument("--ckpt", required=True, help="a run directory (newest checkpoint) or a checkpoint directory")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    s.add_argument("--size", action="append", required=True, help="HEIGHTxWIDTH in pixels; repeat for several")
    s.add_argument("--frames", type=int, action="append", default=None,
                   help="frames per video: once for all sizes or once per --size (default 8; 1 = an image)")
    s.add_argument("--steps", type=int, default=30, help="sampling steps")
    s.add_argument("--solver", choices=("euler", "heun"), default="euler",
                   help="heun: second order, two model calls per step")
    s.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--weights", choices=("ema", "raw"), default="ema")
    s.add_argument("--rope", choices=("none", "ntk", "pi"), default=None,
                   help="RoPE extrapolation for grids larger than trained (default: as trained)")
    s.add_argument("--out", default="samples", help="output directory")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("eval", help="read attributes back from generated synthetic-caption videos")
    s.add_argument("dir", help="a directory written by patchpack generate or demo (has manifest.json)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("bench", help="run a benchmark script (extra args are passed through)")
    s.add_argument("which", choices=BENCHMARKS)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"patchpack {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""The `patchpack` command line.

Each subcommand imports its heavy dependencies lazily, so `patchpack info` works
on a machine without PyAV or the text extras.

One error boundary (`main`): a user error ends in one line on stderr and exit code 2,
never a traceback. User errors are what the library raises for bad input (ValueError
and its subclasses: config, decode, sample and checkpoint errors), OSError (a missing
file, a full disk, a permission), FloatingPointError (a run that diverged) and a
missing optional module (the message names the extra to install). Anything else is a
bug and keeps its traceback. `--debug` or PATCHPACK_DEBUG=1 shows the traceback of
user errors too. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import runpy
import sys
import time
from pathlib import Path

BENCHMARKS = ("packing", "attention", "pipeline", "e2e", "decode_memory")


SOLVERS = ("euler", "heun")  # model.sampler.SOLVERS, spelt out so building the parser imports no torch


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


# what a user can cause (docs/reliability.md); everything else is a bug and keeps its traceback
USER_ERRORS = (UserError, ValueError, OSError, FloatingPointError)

# optional modules -> the extra of pyproject.toml that installs them
EXTRAS = {"skimage": "data", "sklearn": "data", "PIL": "data", "matplotlib": "data", "av": "video",
          "webdataset": "video", "braceexpand": "video", "transformers": "text", "triton": "triton",
          "hypothesis": "dev", "tensorboard": None}


def count(low: int = 1):
    """An argparse type: an integer >= low (the parser then says which flag, in one line)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


def finite(low: float | None = None):
    """An argparse type: a finite float (NaN and inf refused), > low when low is given."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and v <= low:
            raise argparse.ArgumentTypeError(f"must be > {low:g}, got {v:g}")
        return v
    return parse


def missing_module(e: ModuleNotFoundError) -> str:
    """The one-line message for a missing optional module: which extra installs it."""
    name = (e.name or "").split(".")[0]
    if name in EXTRAS:
        extra = EXTRAS[name]
        how = f"pip install 'patchpack[{extra}]'" if extra else f"pip install {name}"
        return f"this command needs the optional module {name!r}: {how}"
    return f"module {e.name!r} is not installed (a broken install? reinstall patchpack): {e}"


def one_line(e: BaseException) -> str:
    """A user error as one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message; its last line is the original error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        last = re.match(r"^[A-Za-z_][\w.]*(?:Error|Exception|Data|Requested): (.*)$", lines[-1])
        return last.group(1) if last else lines[-1]  # "pkg.mod.SomeError: message" -> "message"
    head = lines[0] if len(lines) == 1 else f"{lines[0]} ..."
    return head if isinstance(e, (UserError, ValueError)) else f"{type(e).__name__}: {head}"


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


def cmd_bench(args: argparse.Namespace) -> None:
    """Run patchpack.benchmarks.<which> as a script (installed with the package)."""
    sys.argv = [f"patchpack bench {args.which}", *args.rest]
    runpy.run_module(f"patchpack.benchmarks.{args.which}", run_name="__main__", alter_sys=True)


# --------------------------------------------------------------------------- data


def cmd_synth(args: argparse.Namespace) -> None:
    from patchpack.train.data.synth import synth

    synth(args.out, num_samples=args.num_samples, seed=args.seed, shard_size=args.shard_size, overwrite=args.overwrite)


def cmd_make_shards(args: argparse.Namespace) -> None:
    from patchpack.train.data.shards import make_shards

    for path in (args.src, args.captions):
        if not Path(path).exists():
            raise UserError(f"not found: {path}")
    make_shards(args.src, args.captions, args.out, shard_size_mb=args.shard_size_mb, per_caption=args.per_caption,
                overwrite=args.overwrite, check=args.check, max_pixels=args.max_pixels,
                allow_outside=args.allow_outside_src)


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> None:
    from patchpack.train.loops.config import TrainConfig
    from patchpack.train.loops.dit_loop import train
    from patchpack.train.options import load_config

    summary = train(load_config(TrainConfig, args.config, args.overrides))
    if summary.get("rank", 0) == 0:  # under torchrun every rank returns; one prints
        print(summary)


def cmd_train_vae(args: argparse.Namespace) -> None:
    from patchpack.train.loops.vae_config import VAETrainConfig
    from patchpack.train.loops.vae_loop import train_vae
    from patchpack.train.options import load_config

    print(train_vae(load_config(VAETrainConfig, args.config, args.overrides)))


def cmd_encode_latents(args: argparse.Namespace) -> None:
    from patchpack.train.data.config import DataConfig
    from patchpack.train.data.latent_shards import encode_latent_shards

    for path in (args.src, args.vae):
        if not Path(path).exists():
            raise UserError(f"not found: {path}")
    data = DataConfig(fps=args.fps, max_seconds=args.max_seconds, max_frames=args.max_frames)
    encode_latent_shards(args.src, args.vae, args.out, data=data, max_pixels=args.max_pixels,
                         max_frames=args.max_frames, chunk=args.chunk, shard_size=args.shard_size,
                         threads=args.threads, overwrite=args.overwrite)


# --------------------------------------------------------------------------- demo, generate, eval


def cmd_demo(args: argparse.Namespace) -> None:
    from patchpack.train.apps.demo import DemoOptions, run_demo

    opts = DemoOptions(out=args.out, config=args.config, overrides=args.overrides, vae=args.vae,
                       prompts=args.prompts, sample_steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                       minutes=args.minutes, solver=args.solver)
    if args.num_samples is not None:
        opts.num_samples = args.num_samples
    if args.quick:
        opts = opts.quick()
    run_demo(opts, data_only=args.data_only)


def cmd_generate(args: argparse.Namespace) -> None:
    from patchpack.train.apps.generate import load_run, parse_size, requests, sample, write_outputs
    from patchpack.train.apps.prompting import media_size, with_condition

    media = args.image or args.video or (args.connect or [None])[0] or args.edit
    if not args.size and not media:
        raise UserError("--size HEIGHTxWIDTH is required (without it, --image, --video, --connect or --edit "
                        "sets the size from the given media)")
    sizes = [parse_size(s) for s in args.size or []]
    run = load_run(args.ckpt, weights=args.weights, rope_extrapolation=args.rope)
    sizes = sizes or [media_size(run, media)]
    reqs = requests(args.prompt, sizes=sizes, frames=args.frames or [run.default_frames])
    reqs = with_condition(run, reqs, image_path=args.image, video_path=args.video, extend_by=args.extend,
                          backward=args.backward, connect_paths=args.connect, edit_path=args.edit,
                          strength=args.strength, frames_given=args.frames is not None)
    t0 = time.perf_counter()
    videos = sample(run, reqs, steps=args.steps, cfg_scale=args.cfg, seed=args.seed, progress=True,
                    solver=args.solver)
    dt = time.perf_counter() - t0
    write_outputs(args.out, reqs, videos, fps=run.fps,
                  intro=f"{run.checkpoint} ({run.weights} weights), {args.steps} steps, CFG {args.cfg}, seed {args.seed}",
                  info={"checkpoint": str(run.checkpoint), "steps": args.steps, "cfg_scale": args.cfg, "seed": args.seed})
    print(f"generated {len(reqs)} videos in {dt:.1f} s from {run.checkpoint} (step {run.step})")
    print(f"  {Path(args.out) / 'index.html'}  (gallery)\n  {Path(args.out) / 'contact_sheet.png'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from patchpack.train.apps.evaluate import evaluate_dir, format_report

    if not (Path(args.dir) / "manifest.json").is_file():
        raise UserError(f"{args.dir} has no manifest.json (write one with patchpack generate or patchpack demo)")
    report = evaluate_dir(args.dir)
    print(format_report(report))
    print(f"  written to {Path(args.dir) / 'eval.json'}")


# --------------------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    """argparse with the boundary's promise: a bad flag is one line and exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="patchpack", description=__doc__.splitlines()[0])
    debug_help = "show tracebacks for user errors too (or PATCHPACK_DEBUG=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    common = Parser(add_help=False)  # --debug after the command name works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add(*a, parents=[common], **kw)  # type: ignore[method-assign]

    s = sub.add_parser("info", help="versions, torch threads, attention backends with reasons")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="write the embedded synthetic dataset as webdataset shards")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--num-samples", type=count(1), default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=count(1), default=64, help="samples per shard")
    s.add_argument("--overwrite", action="store_true", help="delete the shards already in --out first")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("make-shards", help="convert a folder of videos/images + captions file into shards")
    s.add_argument("src", help="folder with the media files")
    s.add_argument("--captions", required=True, help='JSON/JSONL: [{"file": "video0.mp4", "captions": ["..."]}]')
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--shard-size-mb", type=finite(0.0), default=256.0)
    s.add_argument("--per-caption", action="store_true", help="one sample per caption instead of all captions per sample")
    s.add_argument("--overwrite", action="store_true", help="delete the shards already in --out first (refused otherwise)")
    s.add_argument("--check", choices=("decode", "header"), default="decode",
                   help="decode: read every frame of every file (one frame in memory); header: sizes only, fast")
    s.add_argument("--max-pixels", type=count(1), default=8192 * 8192, help="per frame; larger files are skipped")
    s.add_argument("--allow-outside-src", action="store_true",
                   help="package files the captions name outside SRC ('..', absolute paths, symlinks)")
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
    s.add_argument("--fps", type=finite(0.0), default=8.0, help="resample videos to this rate before encoding")
    s.add_argument("--max-seconds", type=finite(0.0), default=2.0, help="clip length cap")
    s.add_argument("--max-frames", type=count(1), default=None, help="frame cap (rounded down to 1 + k x temporal)")
    s.add_argument("--max-pixels", type=count(1), default=None, help="pixels per frame cap (aspect kept)")
    s.add_argument("--chunk", type=count(1), default=None, help="latent frames per encode step (long videos)")
    s.add_argument("--shard-size", type=count(1), default=64, help="samples per shard")
    s.add_argument("--threads", type=count(1), default=None, help="torch threads")
    s.add_argument("--overwrite", action="store_true", help="delete the shards already in --out first (refused otherwise)")
    s.set_defaults(func=cmd_encode_latents)

    s = sub.add_parser("demo", help="synth -> train the tiny DiT on CPU -> generate at many sizes -> gallery + eval")
    s.add_argument("--out", default="runs/demo", help="data/, run/, samples/ and summary.json go here")
    s.add_argument("--config", default=None, help="training config (default: configs/demo.yaml of the checkout)")
    s.add_argument("--num-samples", type=count(1), default=None, help="synthetic clips to write (default 2000)")
    s.add_argument("--prompts", type=count(1), default=8, help="held-out prompts, each generated at every demo size")
    s.add_argument("--steps", type=count(1), default=25, help="sampling steps")
    s.add_argument("--solver", choices=SOLVERS, default="euler",
                   help="heun: second order, two model calls per step")
    s.add_argument("--cfg", type=finite(), default=4.0, help="classifier-free guidance scale")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--minutes", type=finite(0.0), default=None,
                   help="the whole demo's length on a 2-core machine: sets the training steps (default: the config's, ~15)")
    s.add_argument("--vae", default=None, help="an exported VAE directory (default: the demo VAE shipped with patchpack)")
    s.add_argument("--data-only", action="store_true", help="write the demo's synthetic shards to OUT/data and stop")
    s.add_argument("--quick", action="store_true", help="a tiny run of every stage (about a minute; noise out)")
    s.add_argument("overrides", nargs="*", help="training config overrides, e.g. loop.steps=500")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("generate", help="sample videos from a training run at any sizes")
    s.add_argument("--ckpt", required=True, help="a run directory (newest checkpoint) or a checkpoint directory")
    s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    s.add_argument("--size", action="append", default=None,
                   help="HEIGHTxWIDTH in pixels; repeat for several (default with --image, --video, --connect or "
                        "--edit: the media's aspect, at most its size and the largest frame the run trained on)")
    s.add_argument("--frames", type=count(1), action="append", default=None,
                   help="frames per video: once for all sizes or once per --size (default 8, or 9 for a run "
                        "in a x4 causal VAE's latents: 1 + 2 x 4; 1 = an image)")
    s.add_argument("--steps", type=count(1), default=30, help="sampling steps")
    s.add_argument("--solver", choices=SOLVERS, default="euler",
                   help="heun: second order, two model calls per step")
    s.add_argument("--cfg", type=finite(), default=4.0, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--weights", choices=("ema", "raw"), default="ema")
    s.add_argument("--rope", choices=("none", "ntk", "pi"), default=None,
                   help="RoPE extrapolation for grids larger than trained (default: as trained)")
    s.add_argument("--out", default="samples", help="output directory")
    g = s.add_argument_group("prompting with images and videos (docs/generation.md); one mode at a time")
    g.add_argument("--image", metavar="PNG", help="image-to-video: the image is frame 0 of every output")
    g.add_argument("--video", metavar="MP4", help="a clip to extend (with --extend N)")
    g.add_argument("--extend", type=int, metavar="N", help="append N new frames after the --video clip")
    g.add_argument("--backward", action="store_true", help="with --extend: prepend the new frames instead")
    g.add_argument("--connect", nargs=2, metavar=("A", "B"),
                   help="--frames N frames leading from A's last frames into B's first frames")
    g.add_argument("--edit", metavar="MP4", help="SDEdit this clip under the prompt (with --strength)")
    g.add_argument("--strength", type=float, metavar="S", help="--edit: 0 returns the clip, 1 is pure generation")
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
    debug = args.debug or os.environ.get("PATCHPACK_DEBUG", "") not in ("", "0")
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"patchpack {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except ModuleNotFoundError as e:
        if debug:
            raise
        print(f"patchpack {args.command}: error: {missing_module(e)}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"patchpack {args.command}: error: {one_line(e)} (PATCHPACK_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

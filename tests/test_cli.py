"""The command line: real subcommands end to end, and one-line errors for bad input."""

import subprocess
import sys

import numpy as np
import pytest


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "patchpack", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_info_lists_backends_with_reasons():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    for name in ("reference", "cpu", "flex", "flash", "xformers", "triton"):
        assert name in r.stdout
    assert "torch threads" in r.stdout


def test_synth_then_make_shards_errors(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("sklearn")
    r = _run("synth", "--out", str(tmp_path / "d"), "--num-samples", "4", "--shard-size", "2")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "d").glob("*.tar"))) == 2

    r = _run("make-shards", str(tmp_path / "missing"), "--captions", "c.json", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_the_parsers_solvers_are_the_samplers():
    from patchpack.cli import SOLVERS
    from patchpack.model.sampler import SOLVERS as SAMPLER_SOLVERS

    assert SOLVERS == SAMPLER_SOLVERS


def test_unknown_benchmark_is_rejected_by_the_parser():
    r = _run("bench", "nope")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_train_config_errors_are_one_line(tmp_path):
    r = _run("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr and "Traceback" not in r.stderr
    cfg = tmp_path / "run.yaml"
    cfg.write_text("loop:\n  stepz: 3\n")
    r = _run("train", str(cfg))
    assert r.returncode == 2 and "stepz" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    pytest.importorskip("av")
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("demo")
    r = _run("demo", "--quick", "--out", str(out), "--num-samples", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[5/5] evaluate" in r.stdout and "gallery" in r.stdout
    return out


def test_demo_quick_runs_every_stage(demo_dir):
    import json

    summary = json.loads((demo_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 < summary["fill"] <= 1 and summary["useful_tokens_per_s"] > 0
    manifest = json.loads((demo_dir / "samples" / "manifest.json").read_text())
    assert len(manifest["items"]) == 2 * 5 + 2 * 6  # 2 prompts x 5 demo sizes, 2 subjects x 6 prompted requests
    modes = {i["condition"]["mode"] for i in manifest["items"] if "condition" in i}
    assert modes == {"image", "extend", "extend backward"} and "image-to-video" in summary["continuation"]
    assert {i["tag"].split(":")[0] for i in manifest["items"]} >= {"trained size", "unseen duration"}
    assert (demo_dir / "samples" / "index.html").is_file() and (demo_dir / "samples" / "contact_sheet.png").is_file()
    assert set(summary["eval"]) and (demo_dir / "loss_curve.png").is_file()
    # every sample beside a real clip of its caption; the evaluator's table, the noise check, the timings
    plain = [i for i in manifest["items"] if "condition" not in i and not i["tag"].startswith("prompted")]
    assert len(plain) == 2 * 5 and all((demo_dir / "samples" / i["reference"]["gif"]).is_file() for i in plain)
    assert summary["eval_table"][0].startswith("group") and set(summary["noise"]) == {i["tag"] for i in plain}
    assert set(summary["timings"]) == {"data", "latents", "train", "generate", "evaluate", "total"}
    assert summary["held_out_prompts"] == sorted({i["prompt"] for i in plain})


def test_generate_then_eval_from_the_demo_run(demo_dir, tmp_path):
    out = tmp_path / "gen"
    r = _run("generate", "--ckpt", str(demo_dir / "run"), "--prompt", "a red circle moving left fast on a black background",
             "--prompt", "a photo of a cat", "--size", "32x32", "--size", "16x48", "--frames", "5", "--frames", "1",
             "--steps", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(out.glob("*.gif"))) == 4 and len(list(out.glob("*.mp4"))) == 2
    r = _run("eval", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "eval.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{missing}", "--size", "32x32"], "checkpoint not found"),
    (["--ckpt", "{run}", "--size", "32"], "expected HEIGHTxWIDTH"),
    (["--ckpt", "{run}", "--size", "30x32", "--frames", "9"], "multiples of spatial=4"),  # the demo VAE's x4
    (["--ckpt", "{run}", "--size", "28x32", "--frames", "9"], "not a multiple of the patch"),  # latent 7x8, patch 2
    (["--ckpt", "{run}", "--size", "32x32", "--frames", "3"], "T=3"),
])
def test_generate_errors_are_one_line(demo_dir, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "nope", run=demo_dir / "run") for a in args]
    r = _run("generate", "--prompt", "x", *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """first.png (32x32, a synth frame), clip.mp4 (9 frames, 32x32: the demo VAE's 1 + 2 x 4) and
    its decoded frames."""
    import random

    from patchpack.train.data import decode_video, encode_image, encode_mp4
    from patchpack.train.data.synth import shape_clip

    out = tmp_path_factory.mktemp("media")
    clip, _, _ = shape_clip(random.Random(3), 9, 32, 32)
    (out / "first.png").write_bytes(encode_image(clip[0], fmt="png"))
    (out / "wide.png").write_bytes(encode_image(clip[0, :16], fmt="png"))
    (out / "clip.mp4").write_bytes(encode_mp4(clip, fps=8))
    decoded = decode_video((out / "clip.mp4").read_bytes(), fps=8.0, max_seconds=None, max_frames=None,
                           max_pixels=1 << 40, max_source_frames=1 << 40).frames_THWC
    return out, clip, decoded


def _strip(path, frames, side=32):
    from patchpack.train.data import decode_image

    strip = decode_image(path.read_bytes(), max_pixels=1 << 40).frames_THWC[0]  # frames left to right, lossless
    return strip.reshape(side, frames, side, 3).transpose(1, 0, 2, 3)


def test_generate_prompted_with_an_image_and_with_a_clip_at_strength_zero(demo_dir, media, tmp_path):
    """The demo run works in the VAE's latent space: what comes back is the given frames through
    the VAE, exactly what encoding and decoding them gives (pixel-space runs return them bit for
    bit: tests/train/apps/test_prompting.py)."""
    import json

    import torch

    from patchpack.train.apps import load_run
    from patchpack.train.data import from_video_CTHW, to_video_CTHW

    src, clip, decoded = media
    vae = load_run(demo_dir / "run").vae
    with torch.no_grad():
        round_trip = from_video_CTHW(vae.decode(vae.encode(to_video_CTHW(decoded))))
    base = ["generate", "--ckpt", str(demo_dir / "run"), "--prompt", "a red circle moving left fast on a black background",
            "--size", "32x32", "--steps", "2"]
    r = _run(*base, "--frames", "9", "--image", str(src / "first.png"), "--out", str(tmp_path / "i2v"))
    assert r.returncode == 0, r.stderr[-3000:]
    item = json.loads((tmp_path / "i2v" / "manifest.json").read_text())["items"][0]
    assert item["condition"]["mode"] == "image" and item["frames"] == 9
    frames = _strip(tmp_path / "i2v" / item["files"]["png"], 9)
    assert np.abs(frames[0].astype(int) - clip[0].astype(int)).mean() < 12  # frame 0 is the image, through the VAE

    r = _run(*base, "--edit", str(src / "clip.mp4"), "--strength", "0", "--out", str(tmp_path / "edit"))
    assert r.returncode == 0, r.stderr[-3000:]
    item = json.loads((tmp_path / "edit" / "manifest.json").read_text())["items"][0]
    got = _strip(tmp_path / "edit" / item["files"]["png"], 9)
    assert item["frames"] == 9 and np.abs(got.astype(int) - round_trip.astype(int)).max() <= 1


def test_prompting_without_size_follows_the_media_within_the_trained_frame(demo_dir, media, tmp_path):
    """Without --size the output takes the given media's aspect, at most its size and the
    largest frame the run trained on; without --size or media it is a one-line error."""
    import json

    from patchpack.train.apps import load_run
    from patchpack.train.data import encode_image

    src, clip, _ = media
    big = np.repeat(np.repeat(clip[0], 4, axis=0), 8, axis=1)  # 128 x 256: larger than anything trained
    (tmp_path / "big.png").write_bytes(encode_image(big, fmt="png"))
    run = load_run(demo_dir / "run")
    unit = run.patch[1] * run.vae.config.spatial
    _, gh, gw = run.model.config.rope_train_grid
    base = ["generate", "--ckpt", str(demo_dir / "run"), "--prompt", "x", "--steps", "1"]
    for name, args in [("extend", ["--video", str(src / "clip.mp4"), "--extend", "4"]),
                       ("connect", ["--connect", str(src / "clip.mp4"), str(src / "clip.mp4"), "--frames", "17"]),
                       ("big", ["--image", str(tmp_path / "big.png"), "--frames", "9"])]:
        r = _run(*base, *args, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr[-3000:]
        item = json.loads((tmp_path / name / "manifest.json").read_text())["items"][0]
        h, w = item["height"], item["width"]
        if name == "big":
            assert h % unit == 0 and w % unit == 0 and (h // unit) * (w // unit) <= gh * gw
            assert abs(w / h - 2) <= unit / h + unit / w  # the aspect within a patch per side
        else:
            assert (h, w) == (32, 32)  # the clip's own size, which training saw
    r = _run(*base, "--out", str(tmp_path / "none"))
    assert r.returncode == 2 and "--size HEIGHTxWIDTH is required" in r.stderr
    assert r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("args, message", [
    (["--video", "{src}/clip.mp4", "--extend", "4", "--backward"], "the nearest that do: --extend 5"),
    (["--image", "{src}/wide.png"], "cannot fill 32x32 keeping its aspect"),
    (["--extend", "4"], "--video and --extend"),
    (["--video", "{src}/clip.mp4", "--extend", "3", "--frames", "5"], "cannot fit whole temporal patches"),
    (["--image", "{src}/missing.png"], "not found"),
])
def test_prompting_errors_are_one_line(demo_dir, media, tmp_path, args, message):
    args = [a.format(src=media[0]) for a in args]
    r = _run("generate", "--ckpt", str(demo_dir / "run"), "--prompt", "x", "--size", "32x32", *args,
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_eval_without_a_manifest_is_a_one_line_error(tmp_path):
    r = _run("eval", str(tmp_path))
    assert r.returncode == 2 and "manifest.json" in r.stderr and "Traceback" not in r.stderr


def test_vae_commands_errors_are_one_line(tmp_path):
    r = _run("train-vae", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("encode-latents", str(tmp_path / "px"), "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr

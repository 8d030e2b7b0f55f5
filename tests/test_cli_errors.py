"""The CLI's one error boundary (issue 15, item 9): a user error is one line on stderr and exit
code 2 for every command; a real bug keeps its traceback; --debug and PATCHPACK_DEBUG=1 show it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from patchpack.cli import main, one_line


def _last_line_error(capsys, command):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"patchpack {command}: error: "), err
    return lines[-1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from patchpack.train.data.synth import synth

    out = tmp_path_factory.mktemp("shards")
    synth(out, num_samples=4, shard_size=4, max_side=32, min_side=16, progress=False)
    return out


def _train(shards, tmp_path, *overrides):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  shards: [{shards}]\nloop:\n  steps: 2\n  progress: false\n"
                   "  threads: 1\nmodel:\n  depth: 1\n  hidden: 32\n  heads: 2\n")
    return main(["train", str(cfg), *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["packer.max_len=-5"], "max_len must be >= 1"),
    (["loop.steps=0"], "loop.steps must be >= 1"),
    (["optim.lr=-1"], "optim.lr must be > 0"),
    (["data.shards=[{empty}]"], "no shards found"),
    (["data.shards=['pipe:cat x.tar']"], "pipe:"),
    (["loop.num_workers=4"], "cannot feed"),
    (["loop.resume=/no/such/checkpoint"], "is not a checkpoint directory"),
    (["data.max_pixels=1", "data.max_skips_in_a_row=8"], "too_large=8"),
    (["data.max_pixels=1", "data.epochs=1"], "ended before the first step"),
    (["model.attn_backend=flash"], "backend='flash' cannot run"),
    (["text=/no/such/encoder"], "unknown text encoder"),
    (["run_dir={afile}"], "File exists"),
])
def test_train_user_errors_are_one_line(shards, tmp_path, capsys, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    overrides = [o.format(empty=tmp_path / "empty", afile=tmp_path / "afile") for o in overrides]
    assert _train(shards, tmp_path, *overrides) == 2
    assert message in _last_line_error(capsys, "train")


def test_make_shards_user_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    caps = tmp_path / "c.json"
    caps.write_text(json.dumps([{"file": "a.png", "caption": "x"}]))
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--captions", str(caps), "--out", str(tmp_path / "afile")], "not a directory"),
        (["--captions", str(src), "--out", str(tmp_path / "o")], "is a directory"),
        (["--captions", str(caps), "--out", str(tmp_path / "o"), "--shard-size-mb", "inf"], "finite"),
        (["--captions", str(caps), "--out", str(tmp_path / "o"), "--shard-size-mb", "nan"], "finite"),
        (["--captions", str(caps), "--out", str(tmp_path / "o"), "--shard-size-mb", "-3"], "must be > 0"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:  # argparse's own errors exit via SystemExit(2)
            rc = main(["make-shards", str(src), *args])
            raise SystemExit(rc)
        assert e.value.code == 2
        assert message in _last_line_error(capsys, "make-shards")


def test_a_used_out_is_refused_then_overwritten(tmp_path, capsys):
    import numpy as np

    from patchpack.train.data.media_encode import encode_image

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    caps = tmp_path / "c.json"
    caps.write_text(json.dumps([{"file": "a.png", "caption": "x"}]))
    argv = ["make-shards", str(src), "--captions", str(caps), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert main(argv) == 2 and "--overwrite" in _last_line_error(capsys, "make-shards")
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["generate", "--ckpt", "x", "--prompt", "p", "--size", "8x8", "--cfg", "nan"], "--cfg: must be a finite number"),
    (["generate", "--ckpt", "x", "--prompt", "p", "--size", "8x8", "--steps", "0"], "--steps: must be >= 1"),
    (["generate", "--ckpt", "x", "--prompt", "p", "--size", "8x8", "--frames", "-2"], "--frames: must be >= 1"),
    (["encode-latents", "s", "--vae", "v", "--out", "o", "--max-pixels", "0"], "--max-pixels: must be >= 1"),
    (["encode-latents", "s", "--vae", "v", "--out", "o", "--fps", "inf"], "--fps: must be a finite number"),
    (["synth", "--out", "o", "--num-samples", "0"], "--num-samples: must be >= 1"),
    (["demo", "--prompts", "0"], "--prompts: must be >= 1"),
    (["demo", "--cfg", "inf"], "--cfg: must be a finite number"),
])
def test_bad_flags_are_one_line_from_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "usage:" not in err, err


@pytest.mark.parametrize("command", ["synth", "demo"])
def test_a_missing_extra_names_the_extra_to_install(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    argv = ["synth", "--out", str(tmp_path / "d"), "--num-samples", "2"] if command == "synth" else \
        ["demo", "--quick", "--out", str(tmp_path / "demo")]
    assert main(argv) == 2
    line = _last_line_error(capsys, command)
    assert "skimage" in line and "pip install 'patchpack[data]'" in line
    assert not list((tmp_path / "d").glob("*.tar*"))  # nothing half-written


def test_debug_shows_the_traceback_and_real_bugs_keep_theirs(tmp_path, capsys, monkeypatch):
    argv = ["generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "p", "--size", "8x8"]
    assert main(argv) == 2
    with pytest.raises(ValueError, match="checkpoint not found"):
        main(["--debug", *argv])
    with pytest.raises(ValueError, match="checkpoint not found"):
        main([*argv, "--debug"])
    monkeypatch.setenv("PATCHPACK_DEBUG", "1")
    with pytest.raises(ValueError, match="checkpoint not found"):
        main(argv)
    monkeypatch.delenv("PATCHPACK_DEBUG")

    import patchpack.cli as cli

    def bug(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_eval", bug)
    with pytest.raises(KeyError):  # not swallowed into a one-liner
        main(["eval", str(tmp_path)])


def test_one_line_of_an_error_from_a_dataloader_worker():
    e = ValueError("Caught NoUsableData in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
                   '  File "x.py", line 3, in f\n    raise NoUsableData(msg)\n'
                   "patchpack.train.data.skips.NoUsableData: 9 samples in a row were skipped")
    assert one_line(e) == "9 samples in a row were skipped"
    assert one_line(OSError(28, "No space left on device")) == "OSError: [Errno 28] No space left on device"


def test_subprocess_prints_exactly_one_line(tmp_path):
    """End to end, in a fresh process: nothing else reaches stderr."""
    (tmp_path / "afile").write_text("x")
    r = subprocess.run([sys.executable, "-m", "patchpack", "make-shards", str(tmp_path), "--captions",
                        str(tmp_path / "afile"), "--out", str(tmp_path / "afile")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "not a directory" in r.stderr


def test_config_files_that_are_not_configs(tmp_path, capsys):
    for name, content, message in (("bad.yaml", b"a: [\n", "is not valid YAML"), ("bin.yaml", b"\xff\xfe\x00", "utf-8"),
                                   ("list.yaml", b"- 1\n- 2\n", "Cannot merge")):
        (tmp_path / name).write_bytes(content)
        assert main(["train", str(tmp_path / name)]) == 2
        assert message in _last_line_error(capsys, "train")


def test_a_vae_directory_with_a_bad_config_is_named(tmp_path, capsys):
    from patchpack.model.vae import CausalVAE, VAEConfig, save_vae

    save_vae(CausalVAE(VAEConfig(widths=[8, 8], latent_channels=4)), tmp_path / "vae")
    (tmp_path / "vae" / "vae.json").write_text('{"spatial": 4, "bogus": 1}')
    (tmp_path / "px").mkdir()
    assert main(["encode-latents", str(tmp_path / "px"), "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "o")]) == 2
    assert "vae.json is not a VAE config" in _last_line_error(capsys, "encode-latents")

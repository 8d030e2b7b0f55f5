"""The command line: real subcommands end to end, and one-line errors for bad input."""

import subprocess
import sys

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

"""Atomic, pickle-free training checkpoints with keep-last-K rotation.

Layout of one checkpoint, a directory named by its step (what the state holds, by
name: run_state.py):

    run_dir/checkpoints/step_00001200/
        model.safetensors    weights, loadable on their own (patchpack.model.checkpoint)
        state.safetensors    every other tensor: EMA, optimizer moments, RNG, data buffers
        state.json           the tree that names those tensors, plus step and config
        (other files)        small text files the caller adds, e.g. the model's config.json

A checkpoint is written into `step_XXXXXXXX.tmp-<pid>/`, fsynced, then renamed into
place. A rename within one filesystem is atomic, so a reader (or a resume after
kill -9) sees either the whole checkpoint or none of it; stale `.tmp-*` directories
from a killed writer are ignored and swept on the next save.

state.json also records the sha256 and size of every other file, so bytes that changed
after the save (a flipped bit, a truncated copy, a disk error) are caught on load, not
trained on. Anything wrong with a checkpoint raises CorruptCheckpoint naming the file
and why; resuming then falls back to the newest checkpoint that loads (run_state.py).
Cost: one extra read of every file, at save and at load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from patchpack.train.files import fsync_dir

from .state_io import flatten, unflatten

_NAME = re.compile(r"^step_(\d{8})$")
META = "state.json"


class CorruptCheckpoint(ValueError):
    """A checkpoint that does not load: the message names the file and why."""


def _write_file(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / META).exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, Tensor],
    state: dict[str, Any],
    keep: int = 3,
    files: dict[str, str] | None = None,
) -> Path:
    """Write one checkpoint atomically and keep only the newest `keep` ones.

    model_state: the model's state_dict (tensors only). state: any tree of dicts,
    lists, tuples, tensors, numpy arrays and JSON scalars (see state_io).
    files: extra text files written beside them, {name: text} (e.g. the model's config.json).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("step_*.tmp-*"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)

    final = root / f"step_{step:08d}"
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    skeleton, tensors = flatten(state)
    weights = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    _write_file(tmp / "model.safetensors", lambda p: save_file(weights, str(p)))
    _write_file(tmp / "state.safetensors", lambda p: save_file(tensors, str(p)))
    for name, text in (files or {}).items():
        _write_file(tmp / name, lambda p, text=text: p.write_text(text))
    sums = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}  # state.json, written last, lists the rest
    meta = {"step": step, "state": skeleton, "files": sums}
    _write_file(tmp / META, lambda p: p.write_text(json.dumps(meta)))
    fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. at exit right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)

    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def file_digest(path: Path) -> dict:
    """{"sha256", "bytes"} of a file, read in 1 MiB blocks."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return {"sha256": h.hexdigest(), "bytes": n}


def verify_checkpoint(path: str | Path) -> dict:
    """state.json of checkpoint `path`, after checking every file it lists against its recorded
    size and sha256 (checkpoints written before checksums existed are only parsed);
    CorruptCheckpoint naming the first bad file otherwise."""
    p = Path(path)
    meta_path = p / META
    if not meta_path.is_file():
        raise CorruptCheckpoint(f"{p} is not a complete checkpoint (no {META})")
    try:
        meta = json.loads(meta_path.read_text())
        int(meta["step"]), meta["state"]  # noqa: B018 - the fields a load needs
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{meta_path} is unreadable ({type(e).__name__}: {e})") from None
    for name, want in (meta.get("files") or {}).items():
        f = p / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{f} is missing")
        got = file_digest(f)
        if got != want:
            what = "size" if got["bytes"] != want.get("bytes") else "sha256"
            raise CorruptCheckpoint(f"{f} does not match the {what} recorded at save time "
                                    f"({got['bytes']} bytes now, {want.get('bytes')} saved)")
    return meta


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, Tensor], dict[str, Any]]:
    """-> (step, model_state, state). Never unpickles. CorruptCheckpoint names a file that
    fails its checksum or does not parse."""
    p = Path(path)
    meta = verify_checkpoint(p)
    loaded = {}
    for name in ("state.safetensors", "model.safetensors"):
        try:
            loaded[name] = load_file(str(p / name))
        except Exception as e:  # SafetensorError, a missing file, ...: all mean "this file is bad"
            raise CorruptCheckpoint(f"{p / name} does not load ({type(e).__name__}: {e})") from None
    try:
        state = unflatten(meta["state"], loaded["state.safetensors"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpoint(f"{p / META} names tensors {p / 'state.safetensors'} does not hold "
                                f"({type(e).__name__}: {e})") from None
    return int(meta["step"]), loaded["model.safetensors"], state


def resolve_resume(resume: str, ckpt_dir: str | Path) -> Path | None:
    """A loop's `resume` option -> the checkpoint to load: "none" -> None, "auto" -> the newest
    in ckpt_dir (None if there is none yet), else a checkpoint directory (ValueError if not)."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(ckpt_dir)
    path = Path(resume)
    if not (path / META).exists():
        raise ValueError(f"loop.resume={resume!r} is not a checkpoint directory (expected 'auto', 'none' or a path)")
    return path

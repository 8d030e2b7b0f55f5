"""Checkpoints: pickle-free round trip of real training state, atomicity, rotation."""

import os
import random

import numpy as np
import pytest
import torch

from patchpack.train.loops.checkpoint import (
    CorruptCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from patchpack.train.loops.state_io import flatten, unflatten


def _optimizer_state():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 5)).square().sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    return model, opt, sched


def _trees_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_trees_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_trees_equal, a, b))
    return a == b


def test_flatten_round_trips_optimizer_and_rng_state():
    _, opt, sched = _optimizer_state()
    tree = {
        "optim": opt.state_dict(),
        "sched": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),  # nested tuples of ints
        "np_rng": np.random.default_rng(3).bit_generator.state,
        "buffer": [{"tokens": torch.randn(3, 4), "key": "a/1"}, {"tokens": torch.randn(0, 4), "key": "b"}],
        "scalar": torch.tensor(2.5),
    }
    skeleton, tensors = flatten(tree)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert _trees_equal(unflatten(skeleton, tensors), tree)
    random.setstate(unflatten(skeleton, tensors)["py_rng"])  # restorable as-is


def test_flatten_refuses_objects_it_cannot_store_without_pickle():
    with pytest.raises(TypeError, match="s.bad: cannot store a object"):
        flatten({"bad": object()})


def test_checkpoint_round_trip_and_rotation(tmp_path):
    model, opt, sched = _optimizer_state()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model_state=model.state_dict(),
                        state={"optim": opt.state_dict(), "sched": sched.state_dict(), "step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030", "step_00000040"]
    step, weights, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert step == 40 and state["step"] == 40
    assert _trees_equal(weights, model.state_dict())
    _, opt2, _ = _optimizer_state()
    opt2.load_state_dict(state["optim"])  # loads into a real optimizer
    assert _trees_equal(opt2.state_dict()["state"], opt.state_dict()["state"])


def test_half_written_checkpoint_is_invisible_and_swept(tmp_path):
    model, _, _ = _optimizer_state()
    save_checkpoint(tmp_path, 1, model_state=model.state_dict(), state={})
    stale = tmp_path / "step_00000002.tmp-99999"  # what a writer killed mid-save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    save_checkpoint(tmp_path, 3, model_state=model.state_dict(), state={})
    assert not stale.exists()
    assert latest_checkpoint(tmp_path).name == "step_00000003"


def test_load_refuses_incomplete_directory(tmp_path):
    (tmp_path / "step_00000005").mkdir()
    with pytest.raises(CorruptCheckpoint, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step_00000005")
    assert latest_checkpoint(tmp_path) is None
    assert os.listdir(tmp_path) == ["step_00000005"]

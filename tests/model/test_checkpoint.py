"""Checkpoints: bitwise round trip through safetensors + JSON; pickles are refused unread."""

from __future__ import annotations

import pickle

import pytest
import torch
from dit_testing import make_sample, make_text, random_dit, run_packed

from patchpack.model import DiTConfig, load_dit, save_dit
from patchpack.model.checkpoint import WEIGHTS_NAME

EXECUTED = []


class _Payload:
    def __reduce__(self):
        return (EXECUTED.append, ("unpickled",))


def test_round_trip_is_bitwise(tmp_path):
    model = random_dit("reference", rope_extrapolation="ntk")
    save_dit(model, tmp_path / "ckpt")
    loaded = load_dit(tmp_path / "ckpt")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    s, text = make_sample((2, 3, 2)), make_text([4])
    out_a = run_packed(model, [s], [[0]], 16, [0.3], text)[0]
    out_b = run_packed(loaded.eval(), [s], [[0]], 16, [0.3], text)[0]
    assert torch.equal(out_a, out_b)


def test_load_overrides_runtime_fields(tmp_path):
    save_dit(random_dit("reference"), tmp_path)
    assert load_dit(tmp_path, attn_backend="cpu").config.attn_backend == "cpu"
    with pytest.raises(ValueError, match="unknown DiTConfig keys"):
        load_dit(tmp_path, not_a_field=1)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_loading_refuses_a_pickle(tmp_path, writer):
    save_dit(random_dit("reference"), tmp_path)
    path = tmp_path / WEIGHTS_NAME
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"w": _Payload()}))
    else:
        torch.save({"w": _Payload()}, path)
    with pytest.raises(ValueError, match="refusing"):
        load_dit(tmp_path)
    assert EXECUTED == []  # nothing from the file ran


def test_config_json_round_trip_and_unknown_keys():
    cfg = DiTConfig(hidden=64, heads=4, patch=(2, 2, 2), rope_split=(0, 1, 1))
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    assert DiTConfig.from_dict({**cfg.to_dict(), "patch": [2, 2, 2]}) == cfg  # JSON lists -> tuples
    with pytest.raises(ValueError, match=r"\['depht'\]"):
        DiTConfig.from_dict({"depht": 3})

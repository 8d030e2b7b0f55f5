"""Config merging at the edge, the LR schedule and EMA."""

from dataclasses import dataclass, field

import pytest
import torch

from patchpack.train.loops.optim import EMA, adamw, warmup_cosine
from patchpack.train.options import ConfigError, load_config, to_yaml


@dataclass
class _Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class _Run:
    steps: int = 10
    optim: _Optim = field(default_factory=_Optim)


def test_yaml_then_dotlist_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\noptim:\n  lr: 0.01\n")
    cfg = load_config(_Run, path, ["optim.lr=3e-4"])
    assert isinstance(cfg, _Run) and isinstance(cfg.optim, _Optim)
    assert (cfg.steps, cfg.optim.lr, cfg.optim.betas) == (7, 3e-4, (0.9, 0.99))
    assert "lr: 0.0003" in to_yaml(cfg)


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("stepz: 3\n", [], "stepz"),
        ("", ["optim.lrr=1"], "optim.lrr"),
        ("", ["steps=many"], "many"),
        ("", ["steps"], "key=value"),
    ],
)
def test_unknown_keys_and_bad_types_fail_naming_the_key(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(_Run, path, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Run, tmp_path / "nope.yaml")


def test_warmup_then_cosine_to_min():
    lrs = [warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(25)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:20], lrs[5:21]))  # monotone decay after warmup
    assert lrs[20] == pytest.approx(0.1) and lrs[24] == pytest.approx(0.1)


def test_adamw_skips_decay_on_1d_params():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95)).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_ema_tracks_and_restores():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 1.0)
    other = torch.nn.Linear(3, 2)
    ema.copy_to(other)
    assert torch.equal(other.weight, ema.shadow["weight"])
    with pytest.raises(ValueError, match="1.5"):
        EMA(model, decay=1.5)


def test_ema_warmup_forgets_the_init():
    """With the step, the early decay is (1 + step) / (10 + step): after 100 steps of constant
    weights the average holds ~none of the init; without warmup 0.998**100 = 82% of it."""
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
    warm, plain = EMA(model, decay=0.998), EMA(model, decay=0.998)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(100):
        warm.update(model, step=step)
        plain.update(model)
    assert warm.decay_at(0) == 0.1 and warm.decay_at(10_000) == 0.998
    assert torch.allclose(warm.shadow["weight"], torch.ones(2, 3), atol=1e-6)
    assert torch.allclose(plain.shadow["weight"], torch.full((2, 3), 1 - 0.998**100), atol=1e-5)


def test_metrics_jsonl_and_console_line(tmp_path, capsys):
    from patchpack.train.loops.metrics import MetricsLog, read_metrics

    log = MetricsLog(tmp_path / "m.jsonl", console=True)
    log.log(10, {"loss": 0.48123, "tokens_per_s": 3263.3, "skipped": {}, "reason": "nonfinite_loss"})
    log.close()
    assert capsys.readouterr().out.strip() == "step 10 | loss 0.4812 | tokens_per_s 3,263 | reason nonfinite_loss"
    (row,) = read_metrics(tmp_path / "m.jsonl")
    assert row["step"] == 10 and row["loss"] == 0.48123 and row["skipped"] == {}

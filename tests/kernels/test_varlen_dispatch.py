"""Backend selection: auto's choice, refusals with reasons, and the error when nothing fits."""

import pytest
import torch

from patchpack.kernels import (
    AUTO_ORDER,
    BACKENDS,
    BackendUnavailableError,
    explain,
    select_backend,
    varlen_attention,
)
from patchpack.kernels.testing import random_varlen_inputs


def _x(dtype=torch.float32):
    return random_varlen_inputs([5, 0, 17], nheads=4, nheads_k=2, headdim=40, dtype=dtype)


def test_auto_order_covers_every_backend_once():
    assert sorted(AUTO_ORDER) == sorted(BACKENDS)
    assert AUTO_ORDER[-2:] == ("cpu", "reference")


def test_auto_picks_cpu_for_cpu_fp32_with_grad():
    x = _x()
    sel = select_backend(x.q.requires_grad_(), x.k, x.v, causal=True)
    assert sel.backend.name == "cpu"
    assert list(sel.skipped) == ["flash", "triton", "xformers", "flex"]
    assert all(sel.skipped[name] for name in sel.skipped)  # every skip says why


def test_auto_never_picks_gpu_only_backends_on_cpu():
    x = _x(torch.bfloat16)
    for needs_grad in (False, True):
        sel = select_backend(x.q, x.k, x.v, needs_grad=needs_grad)
        assert sel.backend.name == "cpu"
        assert any("only on ('cuda',)" in r for r in sel.skipped["triton"])


def test_flex_refused_for_backward_on_cpu_with_the_reason():
    x = _x()
    reasons = BACKENDS["flex"].not_supported_reasons(x.q, x.k, x.v, causal=False, needs_grad=True)
    assert any("backward" in r and "device=cpu" in r for r in reasons), reasons
    assert not BACKENDS["flex"].not_supported_reasons(x.q, x.k, x.v, False, False)
    q = x.q.clone().requires_grad_()
    with pytest.raises(BackendUnavailableError, match="backward.*device=cpu"):
        varlen_attention(q, x.k, x.v, *x.args()[3:], backend="flex")


def test_flash_refused_on_cpu_with_its_reasons():
    x = _x()
    with pytest.raises(BackendUnavailableError) as err:
        varlen_attention(*x.args(), backend="flash")
    message = str(err.value)
    assert "backend='flash'" in message
    assert "device=cpu not in supported devices" in message
    assert "dtype=torch.float32" in message


def test_triton_entry_reports_import_problems_as_reasons():
    x = _x()
    reasons = BACKENDS["triton"].not_supported_reasons(x.q, x.k, x.v, False, False)
    # either the kernel module is missing (reason names it) or it states its own CPU limits
    assert all(isinstance(r, str) and r for r in reasons)


def test_error_when_nothing_fits_lists_every_backend():
    # float64 passes no backend's dtype list: a way to make every backend refuse on any machine
    x = random_varlen_inputs([3, 4], dtype=torch.float64)
    sel = select_backend(x.q, x.k, x.v)
    assert sel.backend is None
    assert list(sel.skipped) == list(AUTO_ORDER)
    from patchpack.kernels.dispatch import resolve_backend

    with pytest.raises(BackendUnavailableError) as err:
        resolve_backend(x.q, x.k, x.v, False, False, "auto")
    for name in AUTO_ORDER:
        assert f"  {name}: " in str(err.value)


def test_unknown_backend_name_is_a_value_error():
    x = _x()
    with pytest.raises(ValueError, match="'fast'"):
        varlen_attention(*x.args(), backend="fast")


def test_explain_is_readable():
    x = _x()
    text = explain(x.q, x.k, x.v, causal=True, needs_grad=True)
    assert text.splitlines()[0] == "chosen: cpu"
    assert "flash:" in text and "flex:" in text

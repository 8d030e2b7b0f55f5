"""Choose a varlen attention backend: the first in a fixed order with no reasons against it.

As in xformers `ops/fmha/dispatch.py`: no probing by try/except around a kernel call, nothing falls
back silently. `select_backend` returns the choice together with the reasons every skipped backend
gave, so callers can log why the fast kernel was not used; `explain` formats the same as text.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cpu, flash, flex, reference, triton_adapter, xformers
from .backend import Backend

# Fast GPU kernels first; `reference` last: it always runs, slowly.
AUTO_ORDER = ("flash", "triton", "xformers", "flex", "cpu", "reference")
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        flash.BACKEND, triton_adapter.BACKEND, xformers.BACKEND, flex.BACKEND,
        cpu.BACKEND, reference.BACKEND,
    )
}


class BackendUnavailableError(RuntimeError, ValueError):
    """The requested backend (or, for "auto", every backend) cannot run these inputs.

    Also a ValueError: asking for a backend the machine or the inputs rule out is a
    choice the user can change (the CLI reports it in one line)."""


@dataclass(frozen=True)
class Selection:
    backend: Backend | None  # None when nothing fits
    skipped: dict[str, list[str]]  # backend name -> reasons it was not chosen

    def describe(self) -> str:
        lines = [f"  {name}: {'; '.join(reasons)}" for name, reasons in self.skipped.items()]
        chosen = self.backend.name if self.backend else "none"
        return "\n".join([f"chosen: {chosen}", *lines])


def needs_grad_of(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def select_backend(
    q_TNH: torch.Tensor,
    k_UGH: torch.Tensor,
    v_UGH: torch.Tensor,
    causal: bool = False,
    needs_grad: bool | None = None,
    backend: str = "auto",
) -> Selection:
    """The backend that would run, and why the ones before it (or the named one) were refused.

    Only metadata of q/k/v is read (device, dtype, shapes): no kernel launch, no GPU query.
    """
    if needs_grad is None:
        needs_grad = needs_grad_of(q_TNH, k_UGH, v_UGH)
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend={backend!r}; choose 'auto' or one of {list(BACKENDS)}")
        reasons = BACKENDS[backend].not_supported_reasons(q_TNH, k_UGH, v_UGH, causal, needs_grad)
        if reasons:
            return Selection(None, {backend: reasons})
        return Selection(BACKENDS[backend], {})
    skipped = {}
    device = q_TNH.device.type
    for name in AUTO_ORDER:
        candidate = BACKENDS[name]
        reasons = candidate.not_supported_reasons(q_TNH, k_UGH, v_UGH, causal, needs_grad)
        auto_devices = candidate.caps.auto_devices
        if auto_devices is not None and device not in auto_devices:
            reasons.append(
                f"auto picks {name} only on {auto_devices}; pass backend={name!r} to force it"
            )
        if not reasons:
            return Selection(candidate, skipped)
        skipped[name] = reasons
    return Selection(None, skipped)


def explain(
    q_TNH: torch.Tensor,
    k_UGH: torch.Tensor,
    v_UGH: torch.Tensor,
    causal: bool = False,
    needs_grad: bool | None = None,
    backend: str = "auto",
) -> str:
    """Human-readable `select_backend`: the chosen backend and each refusal, one per line."""
    return select_backend(q_TNH, k_UGH, v_UGH, causal, needs_grad, backend).describe()


def resolve_backend(q_TNH, k_UGH, v_UGH, causal, needs_grad, backend) -> Backend:
    """`select_backend`, raising BackendUnavailableError with every reason when nothing fits."""
    if needs_grad is None:
        needs_grad = needs_grad_of(q_TNH, k_UGH, v_UGH)
    selection = select_backend(q_TNH, k_UGH, v_UGH, causal, needs_grad, backend)
    if selection.backend is not None:
        return selection.backend
    what = (
        f"q={tuple(q_TNH.shape)} {q_TNH.dtype} on {q_TNH.device}, k={tuple(k_UGH.shape)}, "
        f"causal={causal}, needs_grad={needs_grad}"
    )
    header = (
        f"backend={backend!r} cannot run {what}:"
        if backend != "auto"
        else f"no varlen attention backend can run {what}:"
    )
    lines = [f"  {name}: {'; '.join(r)}" for name, r in selection.skipped.items()]
    raise BackendUnavailableError("\n".join([header, *lines]))

"""What a varlen attention backend declares about itself, and the reasons it refuses an input.

Modelled on xformers `ops/fmha` (facebookresearch/xformers): each operator lists the devices,
dtypes, head dims and features it supports, and `not_supported_reasons` turns a concrete call into
readable strings. An empty list means "can run". Dispatch never probes by trying and catching.

Legend: T total q tokens, U total k/v tokens, N q heads, G kv heads, H head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Capabilities:
    name: str
    devices: tuple[str, ...]  # device types ("cpu", "cuda") the kernel runs on
    dtypes: tuple[torch.dtype, ...]
    max_headdim: int | None = None  # None: any head dim
    causal: bool = True
    gqa: bool = True  # nheads_k < nheads without the caller repeating k/v
    backward_devices: tuple[str, ...] = ()  # device types with a backward pass
    deterministic: bool = False  # two identical calls give bitwise-equal outputs and grads
    auto_devices: tuple[str, ...] | None = None  # devices where backend="auto" may pick it; None: all


def capability_reasons(
    caps: Capabilities,
    q_TNH: torch.Tensor,
    k_UGH: torch.Tensor,
    causal: bool,
    needs_grad: bool,
) -> list[str]:
    """Reasons that follow from the declared capabilities alone (no import, no GPU query)."""
    reasons = []
    device = q_TNH.device.type
    if device not in caps.devices:
        reasons.append(f"device={device} not in supported devices {caps.devices}")
    if q_TNH.dtype not in caps.dtypes:
        names = tuple(str(d).removeprefix("torch.") for d in caps.dtypes)
        reasons.append(f"dtype={q_TNH.dtype} not in supported dtypes {names}")
    headdim = q_TNH.shape[-1]
    if caps.max_headdim is not None and headdim > caps.max_headdim:
        reasons.append(f"headdim={headdim} > max supported {caps.max_headdim}")
    if causal and not caps.causal:
        reasons.append("causal=True not supported")
    if not caps.gqa and q_TNH.shape[1] != k_UGH.shape[1]:
        reasons.append(f"GQA/MQA (nheads={q_TNH.shape[1]}, nheads_k={k_UGH.shape[1]}) not supported")
    if needs_grad and device not in caps.backward_devices:
        reasons.append(
            f"backward (needs_grad=True) not supported on device={device},"
            f" only on {caps.backward_devices or 'no device'}"
        )
    return reasons


@dataclass(frozen=True)
class Backend:
    """A named kernel: its capabilities, extra (e.g. import) reasons, and the function to call.

    `run(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal, **extra) -> out` receives
    validated inputs and a resolved float softmax_scale.
    """

    caps: Capabilities
    run: Callable[..., torch.Tensor]
    extra_reasons: Callable[..., list[str]] = field(default=lambda q, k, v, causal, needs_grad: [])

    @property
    def name(self) -> str:
        return self.caps.name

    def not_supported_reasons(
        self, q_TNH: torch.Tensor, k_UGH: torch.Tensor, v_UGH: torch.Tensor,
        causal: bool = False, needs_grad: bool = False,
    ) -> list[str]:
        reasons = capability_reasons(self.caps, q_TNH, k_UGH, causal, needs_grad)
        return reasons + self.extra_reasons(q_TNH, k_UGH, v_UGH, causal, needs_grad)

"""`python -m patchpack.kernels.info`: which varlen attention backend runs here, and why not the
others. Two probes: a real fp32 CPU input with gradients (what tests and CPU training use) and a
hypothetical fp16 CUDA input, a meta tensor labelled "cuda", so no GPU is touched.

Legend: T total tokens, N heads, H head dim.
"""

from __future__ import annotations

import os

import torch

from .dispatch import AUTO_ORDER, BACKENDS, select_backend


class _OnDevice:
    """A meta tensor that reports another device: lets us ask about CUDA without a GPU."""

    def __init__(self, tensor: torch.Tensor, device: str):
        self._t = tensor
        self.device = torch.device(device)

    def __getattr__(self, name):
        return getattr(self._t, name)


def report() -> str:
    lines = [
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"interop threads={torch.get_num_interop_threads()}, "
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}",
        f"cuda available: {torch.cuda.is_available()}",
        f"auto order: {', '.join(AUTO_ORDER)}",
    ]
    probes = [
        ("cpu float32, q=(64, 8, 64), causal, with grad", torch.float32, "cpu", True),
        # capability and install checks only: says nothing about whether a GPU is present
        ("cuda float16 (hypothetical), q=(64, 8, 64), causal, with grad", torch.float16, "cuda",
         True),
    ]
    for title, dtype, device, needs_grad in probes:
        q_TNH = torch.zeros(64, 8, 64, dtype=dtype)
        if device != "cpu":
            q_TNH = _OnDevice(torch.empty(64, 8, 64, dtype=dtype, device="meta"), device)
        sel = select_backend(q_TNH, q_TNH, q_TNH, causal=True, needs_grad=needs_grad)
        lines += ["", f"== {title}"]
        for name in AUTO_ORDER:
            reasons = sel.skipped.get(name)
            if reasons is None:  # chosen or after the chosen one: ask it directly
                reasons = BACKENDS[name].not_supported_reasons(q_TNH, q_TNH, q_TNH, True, needs_grad)
            lines.append(f"  {name:<9} {'ok' if not reasons else 'no: ' + '; '.join(reasons)}")
        lines.append(f"  auto -> {sel.backend.name if sel.backend else 'none'}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()

"""GPU backends (flash, xformers, flex on CUDA) against the reference. Skipped cleanly, with the
backend's own reasons, when there is no CUDA device or the package is missing. The GPU is only
queried inside tests, never at import time."""

import pytest
import torch

from patchpack.kernels import BACKENDS, varlen_attention
from patchpack.kernels.testing import check_backend_parity, random_varlen_inputs

pytestmark = pytest.mark.gpu

CASES = [
    ([1, 113, 0, 64, 7], None, 8, 2, 59),  # GQA, odd head dim, zero-length segment
    ([7, 113, 1, 30], [5, 11, 8, 1], 4, 4, 72),  # cross-attention, seqlen_q > seqlen_k
]


def _skip_unless_runnable(backend, dtype, needs_grad):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = random_varlen_inputs([2], dtype=dtype, device="cuda")
    reasons = BACKENDS[backend].not_supported_reasons(x.q, x.k, x.v, True, needs_grad)
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["flash", "xformers", "flex"])
def test_gpu_backend_matches_reference(backend, dtype, case, causal):
    _skip_unless_runnable(backend, dtype, needs_grad=True)
    lengths_q, lengths_k, nheads, nheads_k, headdim = CASES[case]
    inputs = random_varlen_inputs(lengths_q, lengths_k, nheads, nheads_k, headdim, device="cuda")

    def run(x, causal):
        return varlen_attention(*x.args(), causal=causal, backend=backend)

    check_backend_parity(run, inputs, dtype, causal=causal)


def test_auto_picks_a_gpu_kernel_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = random_varlen_inputs([5, 9], dtype=torch.bfloat16, device="cuda")
    from patchpack.kernels import select_backend

    assert select_backend(x.q, x.k, x.v).backend.name != "cpu"

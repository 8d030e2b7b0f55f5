"""Shared by every test: one torch thread.

The tests use tiny tensors, where intra-op threads only add spin-wait, and on a busy
2-core machine they make each op ~50x slower. Subprocess tests set their own threads.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

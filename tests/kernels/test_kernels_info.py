"""`python -m patchpack.kernels.info` lists every backend for both probes."""

from patchpack.kernels import AUTO_ORDER
from patchpack.kernels.info import report


def test_report_lists_every_backend_and_the_choice():
    text = report()
    assert "torch " in text and "threads=" in text
    for name in AUTO_ORDER:
        assert text.count(f"  {name} ") == 2, name
    assert "auto -> cpu" in text

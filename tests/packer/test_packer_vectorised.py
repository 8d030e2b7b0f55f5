"""No per-token Python loops in packer/: a source check, plus a large video run end to end.

Speed itself is measured in benchmarks/packing.py, not asserted here (a wall-clock
bound in a unit test fails on a loaded machine for reasons unrelated to the code).
"""

import ast
import pathlib

import torch

import patchpack.packer as packer
from patchpack.packer import PackerConfig, drop_tokens, patchify, prepare_sample, unpatchify

PACKER_DIR = pathlib.Path(packer.__file__).parent
PER_TOKEN = ("_N", "_ND", "_N3", "_K", "_K3", "_BLD", "_BL3", "_BL")


def _loops_over_tokens(tree):
    return [
        f"{getattr(node, 'lineno', '?')}: for ... in {ast.unparse(node.iter)}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.For, ast.comprehension)) and any(_per_token(n) for n in _names(node.iter))
    ]


def test_no_loop_iterates_over_token_tensors():
    # positive controls: the check does see per-token loops
    assert _loops_over_tokens(ast.parse("for t in tokens_ND: pass"))
    assert _loops_over_tokens(ast.parse("x = [c for c in s.coords.tolist()]"))
    offenders = []
    for path in sorted(PACKER_DIR.glob("*.py")):
        offenders += [f"{path.name}:{o}" for o in _loops_over_tokens(ast.parse(path.read_text()))]
    assert not offenders, offenders


def _per_token(name):
    return name.endswith(PER_TOKEN) or name in ("tokens", "coords") or name.startswith(("tokens_", "coords_"))


def _names(expr):
    return [n.id for n in ast.walk(expr) if isinstance(n, ast.Name)] + [n.attr for n in ast.walk(expr) if isinstance(n, ast.Attribute)]


def test_large_video_round_trips_through_the_vectorised_path():
    # 16 x 256 x 256 with 2x2 patches: 262144 tokens.
    x = torch.randn(4, 16, 256, 256)
    tokens, coords = patchify(x, (1, 2, 2))
    kept, kc = drop_tokens(tokens, coords, 0.5, generator=torch.Generator().manual_seed(0))
    y = unpatchify(kept, (16, 128, 128), (1, 2, 2), 4, kc)
    s = prepare_sample(x, config=PackerConfig(max_len=8192), generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and len(s) <= 8192
    kept_mask = torch.zeros(16, 128, 128, dtype=torch.bool)
    kept_mask[kc[:, 0].long(), kc[:, 1].long(), kc[:, 2].long()] = True
    assert kept_mask.sum() == len(kept) == len(tokens) // 2
    full = unpatchify(tokens, (16, 128, 128), (1, 2, 2), 4)
    assert torch.equal(full, x)

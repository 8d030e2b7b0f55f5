"""Save nested training state without pickle: tensors to safetensors, the rest to JSON.

Training state is a tree of dicts, lists and tuples whose leaves are tensors, numbers,
strings, None or numpy arrays (optimizer state, data-pipeline state, RNG states).
`flatten` walks it once, moves every tensor into a flat {key: tensor} dict and leaves a
JSON skeleton that names them; `unflatten` rebuilds the same tree. Loading therefore
never unpickles, whatever the checkpoint came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

_TENSOR, _TUPLE, _NDARRAY, _INTKEYS = "__tensor__", "__tuple__", "__ndarray__", "__intkeys__"


def flatten(tree: Any, prefix: str = "s") -> tuple[Any, dict[str, Tensor]]:
    """tree -> (JSON-able skeleton, {name: contiguous CPU tensor})."""
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(node, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(node))
            return {_NDARRAY: path}
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, f"{path}.{k}") for k, v in node.items()}
            if all(isinstance(k, int) for k in node):  # optimizer state is keyed by param index
                return {_INTKEYS: [[k, walk(v, f"{path}.{k}")] for k, v in node.items()]}
            raise TypeError(f"{path}: dict keys must be all str or all int, got {sorted(map(type, node), key=str)}")
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, (bool, int, float, str)) or node is None:
            return node
        if isinstance(node, (np.integer, np.floating, np.bool_)):
            return node.item()
        raise TypeError(f"{path}: cannot store a {type(node).__name__} without pickle")

    return walk(tree, prefix), tensors


def unflatten(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of `flatten`."""
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        if _NDARRAY in skeleton:
            return tensors[skeleton[_NDARRAY]].numpy()
        if _TUPLE in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton[_TUPLE])
        if _INTKEYS in skeleton:
            return {int(k): unflatten(v, tensors) for k, v in skeleton[_INTKEYS]}
        return {k: unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton

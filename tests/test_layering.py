"""The dependency rule, read from the source: imports point one way and private names stay home.

    train -> model -> kernels,  model -> packer,  train -> packer
    packer/ and kernels/ import neither model/ nor train/; model/ imports no train/ module.
    No module imports another module's `_private` name, or reaches one as `module._name`.

Parsed with `ast`, so a violation inside a function body (a lazy import) counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"packer": "patchpack.packer", "kernels": "patchpack.kernels", "model": "patchpack.model",
            "train": "patchpack.train", "benchmarks": "patchpack.benchmarks", "patchpack": "patchpack"}
FORBIDDEN = {
    "patchpack.packer": ("patchpack.model", "patchpack.train", "patchpack.kernels"),
    "patchpack.kernels": ("patchpack.model", "patchpack.train", "patchpack.packer"),
    "patchpack.model": ("patchpack.train",),
}


def _modules() -> dict[str, Path]:
    """dotted module name -> file, for every module of the installed packages' source folders."""
    out = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([dotted, *parts])] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _resolve(module, path, node), [a.name for a in node.names]))
    return found


def _owner(module: str) -> str:
    return next(p for p in sorted(FORBIDDEN, key=len, reverse=True) if module == p or module.startswith(p + "."))\
        if any(module == p or module.startswith(p + ".") for p in FORBIDDEN) else ""


def test_the_rule_sees_every_package():
    # a guard against a vacuous pass: the walk finds modules of every package and their imports
    for dotted in PACKAGES.values():
        assert any(m == dotted or m.startswith(dotted + ".") for m in MODULES), dotted
    assert sum(len(_imports(m, p)) for m, p in MODULES.items()) > 200


@pytest.mark.parametrize("module", sorted(MODULES))
def test_dependencies_point_one_way(module):
    owner = _owner(module)
    if not owner:
        return
    bad = [f"line {line}: {target}" for line, target, _ in _imports(module, MODULES[module])
           if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[owner])]
    assert not bad, f"{module} ({owner}) must not import {FORBIDDEN[owner]}: {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    path = MODULES[module]
    bad = []
    imported_modules: dict[str, str] = {}  # local name -> patchpack module it is bound to
    for line, target, names in _imports(module, path):
        if not target.startswith("patchpack"):
            continue
        for name in names:
            if f"{target}.{name}" in MODULES:
                imported_modules[name] = f"{target}.{name}"
            elif name.startswith("_") and target != module:
                bad.append(f"line {line}: from {target} import {name}")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({imported_modules[node.value.id]})")
    assert not bad, f"{module} reaches into private names: {bad}"


# torch.Tensor._version: the in-place version counter, the one way to key a cache on "this
# tensor has not changed" (kernels/flex.py); not a patchpack name.
FOREIGN_PRIVATE_OK = {"_version"}


def _defined_private(tree: ast.AST) -> set[str]:
    """Private names this module defines itself: functions, classes, globals and attributes it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute):
                        names.add(sub.attr)
                    elif isinstance(sub, ast.Name):
                        names.add(sub.id)
    return {n for n in names if n.startswith("_")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_attributes_of_other_modules_objects(module):
    """`obj._name` outside `self`/`cls` is only allowed for names this module defines."""
    tree = ast.parse(MODULES[module].read_text())
    own = _defined_private(tree)
    external = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names if not a.name.startswith("patchpack")}
    bad = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree)
           if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
           and not (isinstance(n.value, ast.Name) and n.value.id in ({"self", "cls"} | external))
           and n.attr not in own and n.attr not in FOREIGN_PRIVATE_OK]
    assert not bad, f"{module} uses private attributes defined elsewhere: {bad}"

"""The folders are the layers: every import in the source goes down the stack, never up,
and the module-level imports form no circle.

Read from the source (``ast``), so a lazy import inside a function counts too: a layer
that reaches up "only at run time" still depends on what it reaches.

    clients (cli, region, swapdev)  ->  zswap  ->  codecs, pool  ->  storage  ->  common
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: source folder -> the dotted package it installs as (pyproject's package-dir)
FOLDERS = {"devpool": "devpool", "kernels": "devpool.kernels", "host": "devpool.host"}

#: layer of a module, by longest matching prefix
LAYER_OF = {
    "devpool._errors": "common", "devpool._checks": "common", "devpool._packed": "common",
    "devpool._numba_setup": "common", "devpool._compiled": "common", "devpool._locking": "common",
    "devpool.pool.storage": "storage", "devpool.host": "storage",
    "devpool.kernels._device": "storage", "devpool.kernels._copy_kernels": "storage",
    "devpool.kernels._cuda": "storage", "devpool.kernels._check": "storage",
    "devpool.kernels": "storage",
    "devpool.pool": "pool",
    "devpool.codecs": "codecs", "devpool.kernels.lz4": "codecs", "devpool.kernels.lz4_device": "codecs",
    "devpool.kernels.nvcomp": "codecs", "devpool.kernels._lz4_core": "codecs",
    "devpool.zswap": "zswap",
    "devpool.region": "client", "devpool.swapdev": "client", "devpool.cli": "client",
    "devpool": "root",
}
#: what each layer may import (besides itself). The pool's backend selection opens the
#: storages by name; device codecs share the kernels' launch helpers and probe.
ALLOWED = {
    "common": set(),
    "storage": {"common"},
    "pool": {"common", "storage"},
    "codecs": {"common", "storage"},
    "zswap": {"common", "pool", "codecs"},
    "client": {"common", "pool", "codecs", "zswap", "client", "root"},
    "root": {"common", "storage", "pool", "codecs", "zswap", "client"},
}
#: (importer, imported) pairs allowed across the rule, and why
EXCEPTIONS = {
    ("devpool.cli.main", "devpool.kernels._check"): "`devpool check-kernels` is the command about the kernels",
}
#: the frontend sees the pool only through its public door
ZSWAP_MAY_IMPORT_FROM_POOL = {"devpool.pool"}


def layer(mod: str) -> str:
    best = max((p for p in LAYER_OF if mod == p or mod.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def modules() -> dict[str, Path]:
    found = {}
    for folder, dotted in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join((dotted,) + rel)] = path
    return found


def imports(mod: str, path: Path, top_level_only: bool, parents: bool = True) -> set[str]:
    """devpool modules ``mod`` imports (``from x import y`` counts y when y is a module)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    if top_level_only:                       # module level, also inside if/try blocks
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    known = modules()
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names]
            # "from . import uffd" imports the submodule; the package counts only when a
            # name is taken from it
            names = subs + ([target] if not all(s in known for s in subs) else [])
        else:
            continue
        for name in names:
            if name in known:
                out.add(name)
    # importing a.b.c runs a/__init__ and a/b/__init__ first (the storage contract lives
    # in the pool's folder, beside the pool: that is where it is read, not a dependency)
    for name in list(out) if parents else ():
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in known}
    out.discard(mod)
    return out


def test_the_map_covers_every_module():
    assert "devpool.pool.pool" in modules() and "devpool.zswap.frontend" in modules()
    for mod in modules():
        assert layer(mod), mod
    mods = modules()
    # the reader sees relative, absolute and "from . import module" imports
    assert "devpool.pool.allocator" in imports("devpool.pool.pool", mods["devpool.pool.pool"], True)
    assert "devpool.pool.storage" in imports("devpool.host._arena", mods["devpool.host._arena"], True)
    assert "devpool.region.uffd" in imports("devpool.region.client", mods["devpool.region.client"], True)


@pytest.mark.parametrize("mod", sorted(modules()))
def test_imports_go_down_the_stack(mod):
    path = modules()[mod]
    mine = layer(mod)
    found = sorted(imports(mod, path, top_level_only=False, parents=False))
    bad = [m for m in found
           if layer(m) != mine and layer(m) not in ALLOWED[mine] and (mod, m) not in EXCEPTIONS]
    if mine == "zswap":
        bad += [m for m in found
                if layer(m) == "pool" and m not in ZSWAP_MAY_IMPORT_FROM_POOL]
    assert not bad, f"{mod} ({mine}) imports upward or sideways: {[(m, layer(m)) for m in bad]}"


def test_module_level_imports_form_no_circle():
    mods = modules()
    graph = {m: imports(m, p, top_level_only=True) for m, p in mods.items()}
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(m):
        color[m] = GREY
        stack.append(m)
        for n in sorted(graph[m]):
            # a package's __init__ importing its own submodules is not a circle back to it
            if n.startswith(m + "."):
                continue
            if color[n] == GREY and not m.startswith(n + "."):
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if color[n] == WHITE:
                visit(n)
        stack.pop()
        color[m] = BLACK

    for m in sorted(graph):
        if color[m] == WHITE:
            visit(m)


def test_a_planted_upward_import_is_caught(tmp_path, monkeypatch):
    """The checker itself: a pool module importing the frontend must fail it."""
    fake = tmp_path / "evil.py"
    fake.write_text("from ..zswap.frontend import Zswap\n")
    found = imports("devpool.pool.evil", fake, top_level_only=False)
    assert "devpool.zswap.frontend" in found
    assert layer("devpool.zswap.frontend") not in ALLOWED[layer("devpool.pool.evil")]

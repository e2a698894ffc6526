"""Imports go one way (DESIGN.md "Layout"): cosmos_kernels <- nets <- data <- sampling <- training <-
distill <- perf <- cli, bench on top of all; no module imports one of a higher room, and no modules
import each other in a circle. Every import counts, also one inside a function (a lazy import is an
edge all the same); only `if TYPE_CHECKING:` blocks are not imports."""
import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cosmos_kernels", "cosmos_models", "bench")
# room prefix -> level; a module belongs to its longest matching prefix
LEVELS = {
    "cosmos_kernels": 0,
    "cosmos_models._deps": 1,
    "cosmos_models": 2,  # the package facade (build, load_checkpoint, ...) over nets/
    "cosmos_models.nets": 2,
    "cosmos_models.data": 3,
    "cosmos_models.sampling": 4,
    "cosmos_models.training": 5,
    "cosmos_models.distill": 6,
    "cosmos_models.perf": 7,
    "cosmos_models.cli": 8,
    "bench": 9,
}


EXTENSIONS = ("cosmos_kernels._C",)  # compiled modules (setup.py ext_modules): leaves, built or not


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    found = {}
    for pkg in packages:
        for dirpath, _, files in os.walk(root / pkg):
            if "__pycache__" in dirpath:
                continue
            for name in files:
                if name.endswith(".py"):
                    rel = (Path(dirpath) / name).relative_to(root).with_suffix("")
                    parts = list(rel.parts)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = Path(dirpath) / name
    return found


def _type_checking_nodes(tree) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def edges(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    mods = modules(root, packages)

    def resolve(name: str) -> str | None:
        if name in EXTENSIONS:
            return name
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in packages:
                    target = resolve(name)
                    if target is not None and target != mod:
                        targets.add(target)
        graph[mod] = targets
    return graph


def level(mod: str) -> int:
    best = max((p for p in LEVELS if mod == p or mod.startswith(p + ".")), key=len)
    return LEVELS[best]


def room(mod: str) -> str:
    return max((p for p in LEVELS if mod == p or mod.startswith(p + ".")), key=len)


def problems(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            if level(b) > level(a):
                out.append(f"back edge: {a} ({room(a)}) imports {b} ({room(b)}), a room above it")
            elif level(b) == level(a) and room(a) != room(b) and not (room(a) == "cosmos_models" and
                                                                       room(b) == "cosmos_models.nets"):
                out.append(f"sideways edge: {a} ({room(a)}) imports {b} ({room(b)})")
    # cycles: strongly connected components of more than one module (Tarjan)
    index, low, stack, on, counter, comps = {}, {}, [], set(), [0], []

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    import sys
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    for comp in comps:
        a = comp[0]
        b = next(m for m in comp[1:] if m in graph.get(a, ()) or a in graph.get(m, ())) if len(comp) > 1 else comp[0]
        out.append(f"cycle: {a} and {b} import each other (cycle through {comp})")
    return out


def test_imports_go_one_way_and_in_no_circle():
    graph = edges(ROOT)
    assert "cosmos_models.training.trainer" in graph and "bench.kernels" in graph  # the walk sees the tree
    found = problems(graph)
    assert not found, "\n".join(found)


def test_the_check_catches_a_back_edge_and_a_cycle(tmp_path):
    files = {
        "cosmos_kernels/__init__.py": "",
        "cosmos_kernels/a.py": "import cosmos_kernels.b\n",
        "cosmos_kernels/b.py": "def f():\n    from cosmos_kernels import a\n",     # a cycle, through a lazy import
        "cosmos_models/__init__.py": "",
        "cosmos_models/nets/__init__.py": "",
        "cosmos_models/nets/dit.py": "from cosmos_models.training.trainer import Trainer\n",  # a back edge
        "cosmos_models/training/__init__.py": "",
        "cosmos_models/training/trainer.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from cosmos_models.cli import x\nimport cosmos_models.nets.dit\n",
        "cosmos_models/cli/__init__.py": "",
        "bench/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = problems(edges(tmp_path))
    assert any("back edge: cosmos_models.nets.dit" in p and "cosmos_models.training.trainer" in p for p in found)
    assert any(p.startswith("cycle: cosmos_kernels.a and cosmos_kernels.b") for p in found)
    assert not any("cosmos_models.cli" in p for p in found)  # TYPE_CHECKING imports are not edges

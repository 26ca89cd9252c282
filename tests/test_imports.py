"""How the domain's modules depend on each other: no import circle anywhere in `unet_core/` (a
module that needs another's name at import time, either way round, cannot be read alone), and
package `__init__` files that only hand names on, so importing storage loads storage."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every import, at any depth (a lazy import inside a function is still a
    dependency), leaving out `if TYPE_CHECKING:` blocks (never run)."""
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(package: str = "unet_core") -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (importing a module also runs the __init__
    of every package on its way)."""
    modules = {_module_of(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, names in _imports(ast.parse(path.read_text())):
            if target.split(".")[0] != package:
                continue
            found = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules} or {target}
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts))}
            graph[mod] |= {t for t in found if t in modules and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's): each holds a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_circle_in_unet_core():
    assert cycles(import_graph()) == []


def test_the_circle_finder_sees_a_circle_closed_by_a_lazy_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from unet_core.x import y\nif TYPE_CHECKING:\n    import unet_core.z\n")
    assert _imports(tree) == [("unet_core.x", ["y"])]


def test_package_inits_hand_names_on_and_storage_imports_no_image_library():
    code = ("import sys, unet_core.io.storage\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydicom', 'nibabel', 'scipy', 'highdicom'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
    for init in (ROOT / "unet_core" / "__init__.py", ROOT / "unet_core" / "io" / "__init__.py",
                 ROOT / "unet_core" / "segmentation" / "__init__.py"):
        loaded = [t for t, _ in _imports(ast.parse(init.read_text())) if t.startswith("unet_core")]
        assert not loaded, f"{init}: imports {loaded} when the package loads"


def test_names_handed_on_by_the_io_package_are_the_real_ones():
    import unet_core.io as io
    from unet_core.io import nifti, volumes

    assert io.read_volume is volumes.read_volume and io.read_object is volumes.read_object
    assert io.mask_to_nifti_bytes is nifti.mask_to_nifti_bytes

"""The house rules that keep the package easy to change (docs/architecture.md): no module imports another's private
names, and the modules import each other without cycles (function-local imports included)."""

import ast
from pathlib import Path

import bgmatting

ROOT = Path(bgmatting.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("bgmatting", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """``(line, imported module, imported name or None)`` for every import of a bgmatting module in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bgmatting":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "bgmatting":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield node.lineno, (submodule if submodule in modules else target), alias.name


def _graph(modules):
    return {name: {target for _, target, _ in _imports(name, path, modules) if target in modules and target != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_a_private_name_of_another():
    modules = _modules()
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {target}.{imported}"
           for name, path in modules.items() for line, target, imported in _imports(name, path, modules)
           if imported and imported.startswith("_") and not imported.startswith("__") and target != name
           and f"{target}.{imported}" not in modules]
    assert bad == []


def test_no_import_cycles():
    assert _cycles(_graph(_modules())) == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The checker itself: a private import and a two-module cycle in a made-up graph are found."""
    assert _cycles({"a": {"b"}, "b": {"c", "a"}, "c": set(), "d": {"d"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    modules = {"bgmatting.x": tmp_path / "x.py", "bgmatting.pkg.y": tmp_path / "y.py"}
    (tmp_path / "y.py").write_text("from ..x import _hidden, shown\nimport bgmatting.x\n")
    found = list(_imports("bgmatting.pkg.y", modules["bgmatting.pkg.y"], modules))
    assert found == [(1, "bgmatting.x", "_hidden"), (1, "bgmatting.x", "shown"), (2, "bgmatting.x", None)]

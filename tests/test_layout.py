"""The package's layout is the one CONTRIBUTING.md draws: every folder and root module listed, each
importing only from what is listed above it, no cycles inside a folder, small modules."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mpdistill"


def listed_entries() -> list[str]:
    """The entries of CONTRIBUTING.md's tree, in their order ("utils", "errors.py", ...)."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    block = text.split("```\nmpdistill/\n", 1)[1].split("```", 1)[0]
    return [m.group(1) for m in re.finditer(r"^  (\S+?)/?\s{2,}", block, flags=re.M)]


def entry_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


def imports_of(path: Path) -> set[str]:
    """Every mpdistill module a file imports: at the top or inside a function, a public name through the
    package's face (``from mpdistill import MPDTrainer``), or by name in a string that is loaded later
    (``"mpdistill.trainers.mpd:MPDTrainer"``, the public API's table)."""
    import mpdistill

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "mpdistill":
            # A public name comes from the module that defines it; __version__ is the face's own constant.
            found.update(mpdistill._EXPORTS[a.name] for a in node.names if a.name in mpdistill._EXPORTS)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mpdistill."):
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mpdistill."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                r"mpdistill(\.\w+)+(:\w+)?", node.value):
            found.add(node.value.partition(":")[0])
    return found


def entry_of_module(dotted: str) -> str | None:
    parts = dotted.split(".")[1:]
    if not parts:
        return None
    if (PACKAGE / parts[0]).is_dir():
        return parts[0]
    return f"{parts[0]}.py" if (PACKAGE / f"{parts[0]}.py").is_file() else None  # `from mpdistill import Name`


SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_the_tree_is_the_listing():
    listed = listed_entries()
    present = {p.name for p in PACKAGE.iterdir() if (p.is_dir() and p.name != "__pycache__") or p.suffix == ".py"}
    assert set(listed) == present and len(listed) == len(set(listed))
    assert len([p for p in PACKAGE.glob("*.py")]) <= 8


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_is_listed_above_it(path):
    order = {name: i for i, name in enumerate(listed_entries())}
    mine = entry_of(path)
    for target in imports_of(path):
        theirs = entry_of_module(target)
        if theirs is None or theirs == mine:
            continue
        assert order[theirs] < order[mine], f"{path.relative_to(ROOT)} imports {target} ({theirs} is listed below {mine})"


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long


def test_no_cycles_inside_a_folder():
    graph = {}
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in SOURCES}
    for path in SOURCES:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = set()
        for target in imports_of(path):
            while target and target not in modules:  # a name imported from a module: the module
                target = target.rpartition(".")[0]
            if target and target != module and target.rpartition(".")[0] == module.rpartition(".")[0]:
                graph[module].add(target)
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)

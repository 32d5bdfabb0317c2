"""The product packages' imports, read from the source (``ast``; nothing is imported): no circle among their
modules, ``inference`` and ``sr_writer`` never import ``dicomnode``, and product code never imports the tests.

Every ``import`` statement counts, wherever it stands: at module level, inside a function (a lazy import still
runs, only later) and under ``if TYPE_CHECKING:``. TYPE_CHECKING imports never run, but a type a module names is a
dependency of its design like any other, and a circle closed only by one is still a circle (issue 22 found
``inference.chat`` -> ``constraints`` -> ``chat`` so); counting them also keeps the runtime graph, a part of this
one, free of circles. An import's arrow points at the deepest module it names (``from a.b import c`` is ``a.b.c``
when that is a module, else ``a.b``), not at the packages above it, whose ``__init__`` Python also runs: those
would put every module in a circle with its own package. ``importlib.import_module`` of a configured name
(processors, CLI command groups) is not seen.
"""
from __future__ import annotations

import ast
import configparser
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("dicomnode", "inference", "sr_writer")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module: a module of the packages read, else the top-level name imported
    path: Path  # the importing file
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}" + (" (TYPE_CHECKING)" if self.type_checking else "")


def _modules(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(nodes: Iterable[ast.AST], type_checking: bool = False,
                ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in ``nodes`` and below them (functions and classes included), with whether
    ``if TYPE_CHECKING:`` guards it."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_checking
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.body, True)
            yield from _statements(node.orelse, type_checking)
        else:
            yield from _statements(ast.iter_child_nodes(node), type_checking)


def _resolve(name: str, modules: Mapping[str, Path]) -> str:
    """The deepest module of the packages read that ``name`` names, else its top-level name."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return parts[0]


def read_imports(root: Path, packages: Sequence[str]) -> list[Import]:
    """Every import of every module of ``packages`` (folders under ``root``)."""
    modules = _modules(root, packages)
    imports = []
    for source, path in modules.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node, type_checking in _statements([ast.parse(path.read_text(encoding="utf-8"), str(path))]):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            rel = path.relative_to(root)
            imports += [Import(source, _resolve(n, modules), rel, node.lineno, type_checking) for n in names]
    return imports


def circles(imports: Iterable[Import]) -> list[list[Import]]:
    """One closed loop of imports per circle (strongly connected set of modules; an import of itself is one too)."""
    arrows: dict[str, dict[str, Import]] = {}
    for imp in imports:
        arrows.setdefault(imp.source, {}).setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in arrows.get(module, {}):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or module in arrows.get(module, {}):
                groups.append(sorted(group))

    for module in sorted(arrows):
        if module not in index:
            visit(module)
    return [_loop(group, arrows) for group in sorted(groups)]


def _loop(group: list[str], arrows: Mapping[str, Mapping[str, Import]]) -> list[Import]:
    """A shortest loop from the group's first module back to it, through the group only."""
    start, members = group[0], set(group)
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target, imp in sorted(arrows.get(module, {}).items()):
                if target == start:
                    loop = [imp]
                    while loop[0].source != start:
                        loop.insert(0, came[loop[0].source])
                    return loop
                if target in members and target not in came:
                    came[target] = imp
                    following.append(target)
        frontier = following
    raise AssertionError(f"no loop through {group}")  # a strongly connected group always has one


def describe(loop: Sequence[Import]) -> str:
    files = " -> ".join(str(imp.path) for imp in [*loop, loop[0]])
    return f"import circle: {files}\n" + "\n".join(f"    {imp}" for imp in loop)


def forbidden(imports: Iterable[Import], banned: Mapping[str, Iterable[str]]) -> list[Import]:
    """Imports whose source package (top-level name) may not import the target's top-level name."""
    return [imp for imp in imports if imp.target.split(".")[0] in set(banned.get(imp.source.split(".")[0], ()))]


def names_of_test_code(root: Path = REPO) -> set[str]:
    """Names under which test code is importable: ``tests`` and the modules of pytest's ``pythonpath`` folders."""
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    names = {"tests", "conftest"}
    for folder in config.get("tool:pytest", "pythonpath", fallback="").split():
        if folder != ".":
            names |= {p.stem for p in (root / folder).glob("*.py")} | {
                p.parent.name for p in (root / folder).glob("*/__init__.py")}
    return names


def product_rules() -> dict[str, set[str]]:
    tests = names_of_test_code()
    return {"dicomnode": tests, "inference": {"dicomnode", *tests}, "sr_writer": {"dicomnode", *tests}}


# --- the product code ---

def test_product_modules_import_in_no_circle() -> None:
    loops = circles(read_imports(REPO, PRODUCT))
    assert not loops, "\n".join(describe(loop) for loop in loops)


def test_inference_and_sr_writer_never_import_dicomnode_and_product_code_never_imports_tests() -> None:
    bad = forbidden(read_imports(REPO, PRODUCT), product_rules())
    assert not bad, "forbidden imports:\n" + "\n".join(f"    {imp}" for imp in bad)


def test_the_graph_sees_lazy_and_package_imports_of_the_product() -> None:
    """The real graph is read, not an empty one: imports inside functions and of a package's ``__init__``."""
    arrows = {(i.source, i.target) for i in read_imports(REPO, PRODUCT)}
    assert ("dicomnode.cli.node_commands", "dicomnode.node") in arrows  # inside cmd_serve
    assert ("dicomnode.node", "dicomnode.dashboard") in arrows  # from dicomnode.dashboard import DashboardServer
    assert ("inference.constraints", "inference.parsing") in arrows
    assert "cxr_test_processors" in names_of_test_code()  # tests/node is on pytest's pythonpath


# --- the checks themselves, on small packages made here ---

def _package(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_circle_through_a_function_level_import_is_found_and_named(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def later():\n    from .c import thing\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from pkg.a import x\n",  # imports into the circle, not part of it
    })
    loops = circles(read_imports(root, ["pkg"]))
    assert [[(i.source, i.target) for i in loop] for loop in loops] == [
        [("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a")]]
    message = describe(loops[0])
    assert "pkg/a.py -> pkg/b.py -> pkg/c.py -> pkg/a.py" in message
    assert "pkg/b.py:2 imports pkg.c" in message


def test_a_circle_closed_by_a_type_checking_import_counts(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/chat.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.rules import Rule\n",
        "pkg/rules.py": "from pkg.chat import Convention\n",
    })
    (loop,) = circles(read_imports(root, ["pkg"]))
    assert [i.type_checking for i in loop] == [True, False]
    assert "(TYPE_CHECKING)" in describe(loop)


def test_one_way_imports_are_no_circle(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import x\n",  # a package's face: its __init__ is not what pkg.a imports
        "pkg/a.py": "from pkg import b\nimport os\n",
        "pkg/b.py": "from . import c\n",
        "pkg/c.py": "",
    })
    imports = read_imports(root, ["pkg"])
    assert {(i.source, i.target) for i in imports} == {
        ("pkg", "pkg.a"), ("pkg.a", "pkg.b"), ("pkg.a", "os"), ("pkg.b", "pkg.c")}
    assert circles(imports) == []


def test_a_module_importing_itself_is_a_circle(tmp_path: Path) -> None:
    root = _package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "def f():\n    from pkg import a\n"})
    assert [[(i.source, i.target) for i in loop] for loop in circles(read_imports(root, ["pkg"]))] == [
        [("pkg.a", "pkg.a")]]


def test_forbidden_imports_are_found_wherever_they_stand(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "inference/__init__.py": "",
        "inference/ok.py": "import numpy\nfrom inference import leak\n",
        "inference/leak.py": "def f():\n    from dicomnode.config import NodeConfig\n",
        "sr_writer/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dicomnode.db\n",
        "dicomnode/__init__.py": "",
        "dicomnode/uses_tests.py": "from tests.postgres_server import PostgresServer\nimport cxr_test_processors\n",
        "dicomnode/fine.py": "import inference.ok\n",
    })
    rules = {"dicomnode": {"tests", "cxr_test_processors"}, "inference": {"dicomnode"}, "sr_writer": {"dicomnode"}}
    bad = forbidden(read_imports(root, ["dicomnode", "inference", "sr_writer"]), rules)
    assert sorted((i.source, i.target, i.line) for i in bad) == [
        ("dicomnode.uses_tests", "cxr_test_processors", 2), ("dicomnode.uses_tests", "tests", 1),
        ("inference.leak", "dicomnode", 2), ("sr_writer", "dicomnode", 3)]

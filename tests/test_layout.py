"""The package's layout rules (STYLE.md): imports between its modules run one way (no cycle, lazy
imports inside functions included; `if TYPE_CHECKING:` imports, which never run, excepted), and
only cli.py imports the terminal libraries."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "whisfusion_cli"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, top-level outside packages) that `path` imports anywhere but under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    own, outside = set(), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").startswith("whisfusion_cli"):
                base = (node.module or "").removeprefix("whisfusion_cli").lstrip(".")
                own |= {base.split(".")[0]} if base else {a.name for a in node.names}
            else:
                outside.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            outside |= {a.name.split(".")[0] for a in node.names}
    return own - {"", "__init__"}, outside


def test_package_imports_form_no_cycle():
    graph = {p.stem: _imports(p)[0] for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path[path.index(d):] + [m, d] if d in path else path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert "verification" in graph["rescoring"] and "rescoring" not in graph["verify_graphs"]


def test_only_the_cli_imports_typer_and_rich():
    users = {p.stem for p in PACKAGE.glob("*.py") if _imports(p)[1] & {"typer", "rich", "click"}}
    assert users == {"cli"}

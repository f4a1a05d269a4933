"""The layering of the core: each module imports only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lower modules first: a module may import those before it, never those after it.
LAYERS = ["diag/progress.py", "diag/run.py", "diag/engine.py", "diag/api.py", "diag/cli.py"]


def _diag_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):  # lazy imports inside functions count too: a cycle is a cycle
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_core_has_no_import_cycle() -> None:
    modules = [p.removesuffix(".py").replace("/", ".") for p in LAYERS]
    for i, path in enumerate(LAYERS):
        imported = _diag_imports(ROOT / path)
        above = [m for m in modules[i + 1 :] if m in imported]
        assert above == [], f"{path} imports {above}, which import it"

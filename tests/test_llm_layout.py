"""The modules of tomesd.llm import one another in one direction only (no circle), read from their source."""

from __future__ import annotations

import ast
from pathlib import Path

import tomesd.llm

PACKAGE = Path(tomesd.llm.__file__).parent


def _llm_imports(path: Path) -> set[str]:
    """Names of the sibling modules of tomesd.llm that ``path`` imports (type-checking imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("tomesd.llm."):
                names.add(node.module.split(".")[2])
    return names


def test_no_import_circle_inside_tomesd_llm():
    graph = {p.stem: _llm_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for name in graph.get(start, ()):
            if name == target or (name not in seen and reaches(name, target, seen | {name})):
                return True
        return False

    circles = sorted(name for name in graph if reaches(name, name, {name}))
    assert circles == [], f"modules on an import circle: {circles}; imports: {graph}"
    for path in PACKAGE.glob("*.py"):  # the tokenizing helpers have one home, and nobody borrows them elsewhere
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and {"tokenize_prompts", "pad_sequences"} & {a.name for a in node.names}:
                assert node.module in ("tokens", "tomesd.llm.tokens"), f"{path.name} imports them from {node.module}"
    assert graph["compress"] >= {"blocks", "encoder"} and "compress" not in graph["encoder"]

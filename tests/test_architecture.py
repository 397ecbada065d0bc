"""The package's shape, checked: no import circle between modules, no module far over 400 lines, the layers contract.

The layers themselves (cli > report > experiments > runs > extraction > store > models > images > base) are an
import-linter contract in pyproject.toml that CI runs (``lint-imports``); this file adds what that contract does not
see: circles *inside* one stage (``a -> b -> a`` within ``featstore.store``), counted over every import, function-local
ones included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featstore"
MAX_LINES = 450  # "no module over ~400 lines", with room for a docstring


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
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
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_circle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("featstore")
    cycles = _cycles(graph)
    assert not cycles, "import circles (move the shared piece down a stage): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_module_far_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines; split them by concern: {long}"


def test_layers_contract():
    pytest.importorskip("importlinter")
    import subprocess
    import sys
    from pathlib import Path as P

    exe = P(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(exe), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]

"""Every code block in README.md runs, in order, as a new user would run it from a fresh clone.

Blocks are ```bash (run with bash -euo pipefail) or ```python (run with this interpreter); ```text blocks are
illustrations and are not run. A block that needs what the suite cannot have (the package install that CI
does, ImageNet weights, a GPU, a cluster) is preceded by ``<!-- readme-test: skip <reason> -->`` and shows up
as a skipped test with that reason. A ```text block preceded by ``<!-- readme-test: output of the block above -->``
must match what that block printed, so published figures cannot drift from the script that printed them. A
figure quoted as ``mean ± sd`` over n seeds (the header says "over n seeds") may move by
``featstore.stats.mean_tolerance(sd, n)``: training on a CPU is chaotic, and another CPU's kernels give each seed
other numbers, so a re-run elsewhere is a fresh draw of n seeds. Other numbers in a cell after such a figure (an
interval) move with it; numbers that do not vary across seeds must agree within 0.011 (one image in a hundred).

The blocks run in a temporary folder that mirrors the repository's top level (data, pipelines, benchmarks, ...)
with the ``featstore`` command of this environment first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*readme-test:\s*(skip|output of the block above)\s*(.*?)\s*-->\s*$")
NUMBER = re.compile(r"\d+\.\d+")


def readme_blocks(text: str) -> list[dict]:
    """The README's fenced blocks in order: language, code, line number, and the marker line before it (if any)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARK.match(prev)
        blocks.append(
            {
                "lang": lang,
                "code": "\n".join(body) + "\n",
                "line": start + 1,
                "marker": (marker.group(1), marker.group(2)) if marker else None,
            }
        )
        i += 1
    return blocks


BLOCKS = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))


def _id(b: dict) -> str:
    first = next((ln for ln in b["code"].splitlines() if ln.strip() and not ln.startswith("#")), "")
    return f"L{b['line']}-{b['lang']}-{re.sub(r'[^A-Za-z0-9]+', '_', first)[:40]}"


def test_every_block_says_what_it_is():
    untyped = [b["line"] for b in BLOCKS if b["lang"] not in ("bash", "python", "text")]
    assert not untyped, f"README blocks at lines {untyped} need a language: bash or python (run) or text (not run)"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict:
    """A fresh folder mirroring the repository's top level, and the outputs of the blocks run so far."""
    wd = tmp_path_factory.mktemp("readme")
    for entry in REPO.iterdir():
        if (
            entry.name.startswith(".")
            or entry.suffix == ".h5"
            or entry.name.endswith((".runs", ".lock", ".json", ".csv", ".npz"))
        ):
            continue
        (wd / entry.name).symlink_to(entry)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # run as a user would, without quieting TensorFlow by hand
    return {"dir": wd, "env": env, "outputs": {}}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[_id(b) for b in BLOCKS])
def test_readme_block(workdir, index):
    block = BLOCKS[index]
    kind, arg = block["marker"] or (None, "")
    if kind == "skip":
        pytest.skip(f"README line {block['line']}: {arg}")
    if block["lang"] == "text":
        if kind == "output of the block above":
            _same_output(workdir["outputs"].get(index - 1, ""), block["code"], block["line"])
        return
    if block["lang"] == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block["code"]]
    else:
        script = workdir["dir"] / f"readme_block_{index}.py"
        script.write_text(block["code"])
        cmd = [sys.executable, str(script)]
    res = subprocess.run(cmd, cwd=workdir["dir"], env=workdir["env"], capture_output=True, text=True, timeout=900)
    workdir["outputs"][index] = res.stdout
    assert res.returncode == 0, (
        f"README block at line {block['line']} failed:\n{block['code']}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
    )
    noise = [ln for ln in res.stderr.splitlines() if "cuInit" in ln or ln.startswith(("E0000", "W0000", "I0000"))]
    assert not noise, f"README block at line {block['line']} printed TensorFlow start-up noise: {noise[:3]}"


MEAN_SD = re.compile(r"(\d+\.\d+) ± (\d+\.\d+)")
SEEDS = re.compile(r"over (\d+) seeds")


def _row_tolerances(cells: list[str], n_seeds: int) -> list[float]:
    """Each cell's tolerance: from its own ``mean ± sd``, else from the nearest such cell before it, else 0.011."""
    from featstore.stats import mean_tolerance

    tols, current = [], mean_tolerance(0.0, 1)
    for cell in cells:
        m = MEAN_SD.search(cell)
        if m:
            current = mean_tolerance(float(m.group(2)), n_seeds)
        tols.append(current)
    return tols


def _same_output(printed: str, expected: str, line: int) -> None:
    """The README's quoted output equals what was printed, apart from the date line and numbers within their spread."""
    got = [ln for ln in printed.strip().splitlines() if ln.startswith("|")]
    want = [ln for ln in expected.strip().splitlines() if ln.startswith("|")]
    assert got and len(got) == len(want), (
        f"README line {line}: quoted table has {len(want)} rows, the script printed:\n{printed}"
    )
    seeds = SEEDS.search(expected)
    n_seeds = int(seeds.group(1)) if seeds else 1
    for g, w in zip(got, want):
        assert NUMBER.sub("#", g) == NUMBER.sub("#", w), f"README line {line}: {w!r} but the script printed {g!r}"
        w_cells, g_cells = w.split("|"), g.split("|")
        for wc, gc, tol in zip(w_cells, g_cells, _row_tolerances(w_cells, n_seeds)):
            for a, b in zip(NUMBER.findall(gc), NUMBER.findall(wc)):
                assert abs(float(a) - float(b)) <= tol + 1e-9, (
                    f"README line {line}: {w!r} but the script printed {g!r} ({a} vs {b}: more than {tol:.3f} apart, "
                    f"the spread the quoted sd over {n_seeds} seeds allows)"
                )


def test_quoted_spread_is_what_a_check_allows():
    """The checker itself: a deterministic figure must match to 0.011, a seeded mean within its quoted spread."""
    head = "| a | b |\n| --- | --- |\n"
    quoted = "over 5 seeds\n" + head + "| dense | 0.74 ± 0.05 | [0.65, 0.82] |\n| logreg | 0.78 ± 0.00 | [0.72, 0.87] |"
    _same_output(head + "| dense | 0.80 ± 0.03 | [0.71, 0.88] |\n| logreg | 0.79 ± 0.00 | [0.72, 0.87] |", quoted, 1)
    with pytest.raises(AssertionError, match="more than"):
        _same_output(
            head + "| dense | 0.74 ± 0.05 | [0.65, 0.82] |\n| logreg | 0.80 ± 0.00 | [0.72, 0.87] |", quoted, 1
        )
    with pytest.raises(AssertionError, match="more than"):
        _same_output(
            head + "| dense | 0.90 ± 0.05 | [0.65, 0.82] |\n| logreg | 0.78 ± 0.00 | [0.72, 0.87] |", quoted, 1
        )

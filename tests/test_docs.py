"""Every code block of README.md and of the docs/ pages runs, in order, as a reader would run it from a fresh clone.

Blocks are ```bash (run with bash -euo pipefail) or ```python (run with this interpreter); ```text blocks are
illustrations and are not run. Two markers, an HTML comment on the line before a block (invisible on GitHub and in
the built site), say more:

- ``<!-- doc-test: skip <reason> -->``: the block needs what the suite cannot have (the package install that CI
  does, ImageNet weights, a GPU, a cluster, a download); it shows up as a skipped test with that reason.
- ``<!-- doc-test: output of the block above -->`` before a ```text block: its table must match what the block above
  printed, so published figures cannot drift from the script that printed them. A figure quoted as ``mean ± sd``
  over n seeds (the text says "over n seeds") may move by ``featstore.stats.mean_tolerance(sd, n)``: training on a
  CPU is chaotic, and another CPU's kernels give each seed other numbers, so a re-run elsewhere is a fresh draw of
  n seeds. Other numbers in a cell after such a figure (an interval) move with it; numbers that do not vary across
  seeds must agree within 0.011 (one image in a hundred).

State: the README runs first, in a folder that mirrors the repository's top level (data, pipelines, benchmarks, ...)
with the ``featstore`` command of this environment first on PATH; its quick start leaves ``features.h5`` and its
runs there. Each docs page then runs its blocks in order in its own copy of that folder, so a page can use the
quick start's store and runs, and nothing one page does reaches another. A block that fails stops its page: the
blocks after it are reported as skipped, naming it. Each page's results are kept on disk beside its folder under a
file lock, so pytest-xdist workers share them: every block runs once per session, whichever process asks first.
The same extraction on two pages (TWINS) runs once; the other page's block gets a copy of the store it made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
README = "README.md"
PAGES = [README, *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]  # README first: it makes the state
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*doc-test:\s*(skip|output of the block above)\s*(.*?)\s*-->\s*$")
ANY_MARK = re.compile(r"^\s*<!--\s*(doc|readme)[-_ ]?test", re.IGNORECASE)  # a line that means to be a marker
NUMBER = re.compile(r"\d+\.\d+")
TIMEOUT_S = 900  # one block


def page_blocks(text: str) -> list[dict]:
    """A page's fenced blocks in order: language, code, line number, and the marker line before it (if any)."""
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


BLOCKS = {page: page_blocks((REPO / page).read_text(encoding="utf-8")) for page in PAGES}
CASES = [(page, i) for page in PAGES for i in range(len(BLOCKS[page]))]


def _runs(block: dict) -> bool:
    """Whether the suite runs this block (a bash or python block without a skip marker)."""
    return block["lang"] in ("bash", "python") and (block["marker"] or ("",))[0] != "skip"


def _id(case: tuple[str, int]) -> str:
    page, index = case
    b = BLOCKS[page][index]
    first = next((ln for ln in b["code"].splitlines() if ln.strip() and not ln.startswith("#")), "")
    return f"{Path(page).stem}-L{b['line']}-{b['lang']}-{re.sub(r'[^A-Za-z0-9]+', '_', first)[:40]}"


# One extraction on two pages: experiments.md's sweeps and extraction.md's "Several layers in one pass" make the same
# layers.h5 with the same command from the same start (a copy of the README's folder; no block before it on either
# page touches that file or the images). The suite runs it once, on the first page, and the second page's block gets
# a copy of the store it made, with its output: what a reader running that page from the top gets.
# test_twin_blocks_are_one_command checks that the two blocks stay the same command.
TWINS = [("docs/extraction.md", "docs/experiments.md", "layers.h5")]  # (page that runs it, page that copies, file)


def twin_blocks(source: str, copy: str, name: str) -> tuple[int, int] | None:
    """The indexes of the block on ``source`` and on ``copy`` that extract into ``name``, or None unless there is one
    on each page and both are the same code."""
    found = [
        [
            i
            for i, b in enumerate(BLOCKS[p])
            if _runs(b) and "featstore extract" in b["code"] and f"--store {name}" in b["code"]
        ]
        for p in (source, copy)
    ]
    if any(len(f) != 1 for f in found) or BLOCKS[source][found[0][0]]["code"] != BLOCKS[copy][found[1][0]]["code"]:
        return None
    return found[0][0], found[1][0]


class PageRun:
    """One page's blocks, run in order in one folder; the results so far live in the folder, under a file lock."""

    def __init__(self, page: str, folder: Path, env: dict, prepare):
        self.page, self.folder, self.env, self.prepare = page, folder, env, prepare
        self.blocks = BLOCKS[page]
        self.pages: dict[str, PageRun] = {}  # every page's run (set by the pages fixture), for TWINS

    def result(self, index: int) -> dict:
        """Block ``index``'s result, running the blocks before it first where no process has run them yet."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.folder}.lock"):
            state = Path(f"{self.folder}.json")  # beside the folder: the results of the page's blocks so far
            results = json.loads(state.read_text()) if state.exists() else []
            while len(results) <= index:
                results.append(self._next(len(results), results))
                state.write_text(json.dumps(results))
                if len(results) == len(self.blocks) and self.page != README:
                    self._clear(results)
            return results[index]

    def _copy_of_twin(self, index: int) -> dict | None:
        """Block ``index``'s result where it is the copying side of TWINS: the source page's block run (there, with the
        blocks before it, unless a process already did), its file copied into this folder; None to run it here (not
        a twin, or the source's block did not run)."""
        for source, copy, name in TWINS:
            twins = twin_blocks(source, copy, name)
            if copy != self.page or not twins or twins[1] != index:
                continue
            theirs = self.pages[source].result(twins[0])
            kept = Path(f"{self.pages[source].folder}.{name}")
            if theirs["status"] != "ran" or not kept.is_file():
                return None
            shutil.copy2(kept, self.folder / name)
            return {
                **theirs,
                "line": self.blocks[index]["line"],
                "seconds": 0.0,
                "twin": f"{source} line {theirs['line']}",
            }
        return None

    def _clear(self, results: list[dict]) -> None:
        """Remove a finished page's folder (a copy of the README's, ~250 MB: 13 pages would hold 3 GB of disk to the
        session's end; CI once ran out of disk) unless a block failed there, so a failure can still be looked at."""
        if all(r["status"] in ("ran", "not runnable") for r in results):
            shutil.rmtree(self.folder, ignore_errors=True)

    def _next(self, index: int, results: list[dict]) -> dict:
        """Run block ``index`` (the ones before it have results), or say why it is not run."""
        block = self.blocks[index]
        failed = next((r for r in results if r["status"] in ("failed", "not run")), None)
        if failed is not None:
            return {"status": "not run", "reason": failed.get("reason") or f"{self.page} line {failed['line']} failed"}
        if not _runs(block):
            return {"status": "not runnable", "line": block["line"]}
        ready = Path(f"{self.folder}.ready")
        if not ready.exists():
            why = self.prepare(self.folder)
            if why:
                return {"status": "not run", "reason": why}
            ready.touch()
        copied = self._copy_of_twin(index)
        if copied is not None:
            return copied
        if block["lang"] == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", block["code"]]
        else:  # in the folder, as `python script.py` run there: the folder is first on sys.path
            script = self.folder / f".doc-test-block-{index}.py"
            script.write_text(block["code"])
            cmd = [sys.executable, script.name]
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=TIMEOUT_S)
            rc, out, err = res.returncode, res.stdout, res.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = -1, str(exc.stdout or ""), f"timed out after {TIMEOUT_S} s\n{exc.stderr or ''}"
        for source, copy, name in TWINS:  # the file a twin block made, kept for the other page as it is now
            twins = twin_blocks(source, copy, name)
            if rc == 0 and source == self.page and twins and twins[0] == index:
                shutil.copy2(self.folder / name, f"{self.folder}.{name}")
        return {
            "status": "ran" if rc == 0 else "failed",
            "line": block["line"],
            "rc": rc,
            "stdout": out,
            "stderr": err,
            "seconds": round(time.monotonic() - t0, 1),
        }


def _mirror(folder: Path) -> str:
    """A fresh folder holding the repository's top level as links, without stores, runs or outputs of earlier runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if (
            entry.name.startswith(".")
            or entry.name == "site"
            or entry.suffix == ".h5"
            or entry.name.endswith((".runs", ".lock", ".json", ".csv", ".npz", ".png", ".keras"))
        ):
            continue
        (folder / entry.name).symlink_to(entry)
    return ""


@pytest.fixture(scope="session")
def pages(tmp_path_factory) -> dict[str, PageRun]:
    """Every page's run; shared by pytest-xdist workers through the session's common temporary folder."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "doc-tests"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # run as a user would, without quieting TensorFlow by hand
    readme = PageRun(README, root / "README", env, _mirror)
    last = len(BLOCKS[README]) - 1

    def from_readme(folder: Path) -> str:
        """A copy of the folder the README ran in, once every README block ran."""
        done = readme.result(last) if last >= 0 else {"status": "ran"}
        if done["status"] == "not run":
            return f"this page starts from the README's state, and {done['reason']}"
        shutil.copytree(
            readme.folder, folder, symlinks=True, ignore=shutil.ignore_patterns(".doc-test*"), dirs_exist_ok=True
        )
        return ""

    runs = {README: readme} | {
        p: PageRun(p, root / p.replace("/", "_").removesuffix(".md"), env, from_readme) for p in PAGES[1:]
    }
    for run in runs.values():
        run.pages = runs
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(("page", "index"), CASES, ids=[_id(c) for c in CASES])
def test_doc_block(pages, page, index):
    block = BLOCKS[page][index]
    where = f"{page} line {block['line']}"
    kind, arg = block["marker"] or (None, "")
    if kind == "skip":
        pytest.skip(f"{where}: {arg}")
    if block["lang"] == "text":
        if kind == "output of the block above":
            above = pages[page].result(index - 1) if index > 0 else {"status": "not runnable"}
            if above["status"] == "not run":
                pytest.skip(f"{where}: not checked, {above['reason']}")
            assert above["status"] in ("ran", "failed"), f"{where}: quotes the output of a block the suite does not run"
            if above["status"] == "failed":
                pytest.skip(f"{where}: not checked, the block above failed")
            _same_output(above["stdout"], block["code"], where)
        return
    res = pages[page].result(index)
    if res["status"] == "not run":
        pytest.skip(f"{where}: not run, {res['reason']}")
    assert res["status"] == "ran", (
        f"{where} failed (exit {res['rc']}):\n{block['code']}\n--- stdout\n{res['stdout'][-3000:]}\n"
        f"--- stderr\n{res['stderr'][-3000:]}"
    )
    noise = [
        ln for ln in res["stderr"].splitlines() if "cuInit" in ln or ln.lstrip().startswith(("E0000", "W0000", "I0000"))
    ]
    assert not noise, f"{where} printed TensorFlow start-up noise: {noise[:3]}"


def test_twin_blocks_are_one_command():
    """Each TWINS pair is one block on each page, the same command: an edit of one page's block that the other does
    not get would otherwise copy a store that page's command no longer makes."""
    for source, copy, name in TWINS:
        assert twin_blocks(source, copy, name), (
            f"{source} and {copy} each need one `featstore extract ... --store {name}` block, the same command on "
            f"both (TWINS in tests/test_docs.py: the suite runs it once); change both, or remove the pair from TWINS"
        )


def test_every_block_says_what_it_is():
    untyped = [f"{p} line {b['line']}" for p in PAGES for b in BLOCKS[p] if b["lang"] not in ("bash", "python", "text")]
    assert not untyped, f"blocks need a language, bash or python (run) or text (not run): {untyped}"


def test_every_marker_is_one_the_suite_reads():
    """A misspelt marker would silently run a block meant to be skipped, or leave a quoted table unchecked."""
    bad = [
        f"{p} line {n}: {ln.strip()}"
        for p in PAGES
        for n, ln in enumerate((REPO / p).read_text(encoding="utf-8").splitlines(), 1)
        if ANY_MARK.search(ln) and not MARK.match(ln)
    ]
    assert not bad, (
        "markers read `<!-- doc-test: skip REASON -->` or `<!-- doc-test: output of the block above -->`: "
        + "; ".join(bad)
    )
    quoted = [
        f"{p} line {b['line']}"
        for p in PAGES
        for b in BLOCKS[p]
        if b["marker"] and b["marker"][0] != "skip" and b["lang"] != "text"
    ]
    assert not quoted, f"an `output of the block above` marker goes before a ```text block: {quoted}"


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


def _same_output(printed: str, expected: str, where: str) -> None:
    """The quoted output equals what was printed, apart from the date line and numbers within their spread."""
    got = [ln for ln in printed.strip().splitlines() if ln.startswith("|")]
    want = [ln for ln in expected.strip().splitlines() if ln.startswith("|")]
    assert got and len(got) == len(want), f"{where}: quoted table has {len(want)} rows, the script printed:\n{printed}"
    seeds = SEEDS.search(expected)
    n_seeds = int(seeds.group(1)) if seeds else 1
    for g, w in zip(got, want):
        assert NUMBER.sub("#", g) == NUMBER.sub("#", w), f"{where}: {w!r} but the script printed {g!r}"
        w_cells, g_cells = w.split("|"), g.split("|")
        for wc, gc, tol in zip(w_cells, g_cells, _row_tolerances(w_cells, n_seeds)):
            for a, b in zip(NUMBER.findall(gc), NUMBER.findall(wc)):
                assert abs(float(a) - float(b)) <= tol + 1e-9, (
                    f"{where}: {w!r} but the script printed {g!r} ({a} vs {b}: more than {tol:.3f} apart, "
                    f"the spread the quoted sd over {n_seeds} seeds allows)"
                )


def test_quoted_spread_is_what_a_check_allows():
    """The checker itself: a deterministic figure must match to 0.011, a seeded mean within its quoted spread."""
    head = "| a | b |\n| --- | --- |\n"
    quoted = "over 3 seeds\n" + head + "| dense | 0.74 ± 0.05 | [0.65, 0.82] |\n| logreg | 0.78 ± 0.00 | [0.72, 0.87] |"
    _same_output(head + "| dense | 0.80 ± 0.03 | [0.71, 0.88] |\n| logreg | 0.79 ± 0.00 | [0.72, 0.87] |", quoted, "x")
    with pytest.raises(AssertionError, match="more than"):
        _same_output(
            head + "| dense | 0.74 ± 0.05 | [0.65, 0.82] |\n| logreg | 0.80 ± 0.00 | [0.72, 0.87] |", quoted, "x"
        )
    with pytest.raises(AssertionError, match="more than"):
        _same_output(
            head + "| dense | 0.92 ± 0.05 | [0.65, 0.82] |\n| logreg | 0.78 ± 0.00 | [0.72, 0.87] |", quoted, "x"
        )


# Links: checked here without mkdocs (GitHub's view: files and heading anchors), and by `mkdocs build --strict`.

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slugs(text: str) -> set[str]:
    """The heading anchors GitHub gives a page: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for ln in text.splitlines():
        if ln.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", ln)
        if in_code or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_links_between_pages_resolve():
    """Every relative link of the README and the docs pages names a file that exists, and a heading of it."""
    dead = []
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        body = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # links inside code blocks are code
        for target in LINK.findall(body):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            path, _, anchor = target.partition("#")
            dest = (REPO / page).parent / path if path else REPO / page
            if not dest.is_file():
                dead.append(
                    f"{page}: {target} (no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest})"
                )
            elif anchor and dest.suffix == ".md" and anchor not in _slugs(dest.read_text(encoding="utf-8")):
                dead.append(f"{page}: {target} (no heading #{anchor})")
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_every_page_is_in_the_site():
    """mkdocs.yml's nav lists every docs page, and only pages that exist (index.md is the README, see docs/hooks.py)."""
    nav = set(re.findall(r"^\s*-\s*[^:]+:\s*(\S+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M))
    pages = {p.removeprefix("docs/") for p in PAGES[1:]} | {"index.md"}
    assert nav == pages, (
        f"in the nav, not in docs/: {sorted(nav - pages)}; in docs/, not in the nav: {sorted(pages - nav)}"
    )


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: no missing page, dead link or dead anchor (CI runs the same command)."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra: pip install -e '.[dev]'")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

"""Attack 21, findings 3, 5 and 8 (issue #19): every output replaces only a file featstore wrote (``similar --html``,
``leaks --out``, ``export --out``), a map layout's ``.npy`` headers checked before anything is allocated, and a
thumbnail keyed on the image's inode and ctime too. Synthetic stores only; each test failed with its fix sabotaged (the
sabotage is named in its docstring)."""

from __future__ import annotations

import io
import logging
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image

from featstore.errors import OutputError
from featstore.experiments.projection import project
from featstore.outputs import check_own_output, starts_with
from featstore.report.site.thumbs import ThumbCache
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture
def store(tmp_path):
    """40 train and 20 test rows of 4 values, and a user's files beside them."""
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        write_arrays(path, "ex", split, rng.random((n, 4)).astype("f4"), np.arange(n) % 2, ["a", "b"])
    (tmp_path / "train.py").write_text("import keras\n")
    with zipfile.ZipFile(tmp_path / "my_cnn.keras", "w") as z:
        z.writestr("config.json", "{}")
    for name in ("notes.html", "notes.csv", "notes.npz", "notes.parquet"):
        (tmp_path / name).write_text("# my notes\n")
    return path


def _refused(args, victim, words):
    before = victim.read_bytes()
    r = cli(*args)
    line = no_traceback(r)
    assert r.exit_code == 1 and words in line and str(victim) in line, (args, line)
    assert victim.read_bytes() == before


# ------------------------------------------------------------------ 3. outputs replace only featstore's own files
def test_check_own_output_refuses_another_suffix_and_a_file_not_ours(tmp_path):
    """Sabotage: drop check_own_output's suffix test, then its ``ours`` test: each half fails."""
    mine = tmp_path / "mine.csv"
    mine.write_text("mine,\n")
    assert check_own_output(mine, "--out", "a CSV", (".csv",), lambda p: starts_with(p, b"mine,")) == mine
    assert check_own_output(tmp_path / "new.csv", "--out", "a CSV", (".csv",), lambda p: False)  # nothing there
    with pytest.raises(OutputError, match=r"give a name ending in \.csv, e\.g\. x\.csv"):
        check_own_output(tmp_path / "x.py", "--out", "a CSV", (".csv",), lambda p: True)
    with pytest.raises(OutputError, match="exists and is not a CSV featstore wrote; .* remove that file first"):
        check_own_output(mine, "--out", "a CSV", (".csv",), lambda p: starts_with(p, b"other,"))


def test_similar_html_replaces_only_its_own_page(store, tmp_path):
    """Sabotage: ``is_similar_page`` returning True (notes.html replaced); the template without its marker (the second
    page refused)."""
    base = ("similar", "--store", store, "--split", "train", "-k", "2", "--exact", "train/0", "--html")
    _refused((*base, tmp_path / "train.py"), tmp_path / "train.py", "give a name ending in .html")
    _refused((*base, tmp_path / "notes.html"), tmp_path / "notes.html", "is not a similar-images page featstore wrote")
    for _ in range(2):  # an earlier page is replaced
        r = cli(*base, tmp_path / "page.html")
        assert r.exit_code == 0, r.output
    assert starts_with(tmp_path / "page.html", b"<!doctype html>")


def test_leaks_out_replaces_only_a_leaks_csv(store, tmp_path):
    """Sabotage: ``is_leaks_csv`` returning True (notes.csv replaced); the leaks command's check back to check_output
    (my_cnn.keras replaced)."""
    base = ("leaks", "--store", store, "--out")
    _refused((*base, tmp_path / "my_cnn.keras"), tmp_path / "my_cnn.keras", "give a name ending in .csv")
    _refused((*base, tmp_path / "notes.csv"), tmp_path / "notes.csv", "is not a leaks CSV featstore wrote")
    for _ in range(2):
        r = cli(*base, tmp_path / "leaks.csv")
        assert r.exit_code == 0, r.output
    assert starts_with(tmp_path / "leaks.csv", b"query_split,query_path,")


def test_leaks_png_replaces_only_a_chart_featstore_drew(store, tmp_path):
    """Sabotage: the leaks command's ``check_own_output`` line for ``--png`` removed (notes.txt, and the text files
    ``notes`` and ``notes.png``, replaced with the chart)."""
    base = ("leaks", "--store", store, "--png")
    (tmp_path / "notes").write_text("# my notes\n")
    (tmp_path / "notes.txt").write_text("# my notes\n")
    (tmp_path / "notes.png").write_text("# my notes\n")
    _refused((*base, tmp_path / "notes.txt"), tmp_path / "notes.txt", "give a name ending in .png")
    _refused((*base, tmp_path / "notes"), tmp_path / "notes", "is not a chart (PNG) featstore wrote")
    _refused((*base, tmp_path / "notes.png"), tmp_path / "notes.png", "is not a chart (PNG) featstore wrote")
    for _ in range(2):
        r = cli(*base, tmp_path / "pairs.png")
        assert r.exit_code == 0, r.output
    assert starts_with(tmp_path / "pairs.png", b"\x89PNG")


@pytest.mark.parametrize("fmt", ["csv", "npz", "parquet"])
def test_export_out_replaces_only_an_export(store, tmp_path, fmt):
    """Sabotage: the check_own_output line in export() removed (notes.md and notes.<fmt> replaced); ``is_export``
    returning False (the second export refused)."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    base = ("export", "--store", store, "--split", "train", "--format", fmt, "--out")
    _refused((*base, tmp_path / "train.py"), tmp_path / "train.py", f"give a name ending in .{fmt}")
    _refused((*base, tmp_path / f"notes.{fmt}"), tmp_path / f"notes.{fmt}", f"is not an export ({fmt}) featstore")
    for _ in range(2):
        r = cli(*base, tmp_path / f"out.{fmt}")
        assert r.exit_code == 0, r.output
    if fmt == "npz":
        with np.load(tmp_path / "out.npz") as z:
            assert z["features"].shape == (40, 4)


# ------------------------------------------------------------------ 5. a map layout's headers before allocation
def test_a_planted_layout_header_allocates_nothing_and_is_made_again(store, caplog):
    """Sabotage: ``_cached`` reading the members with ``np.load`` again (its 1 GB ``meta.npy`` allocated: the peak)."""
    cache = store.parent / "maps"
    first = project(store, method="pca", cache=cache)
    assert not first.cached and project(store, method="pca", cache=cache).cached
    (layout,) = cache.glob("map-*.npz")
    with zipfile.ZipFile(layout) as z:
        members = {n: z.read(n) for n in z.namelist()}
    head = io.BytesIO()  # 1 GB of <U1 declared, 4 bytes there
    np.lib.format.write_array_header_1_0(head, {"descr": "<U1", "fortran_order": False, "shape": (250_000_000,)})
    members["meta.npy"] = head.getvalue() + b"A\0\0\0"
    with zipfile.ZipFile(layout, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            again = project(store, method="pca", cache=cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated reading a planted layout"
    assert not again.cached and np.allclose(again.xy, first.xy)
    said = [m for m in caplog.messages if "is made again" in m]
    assert len(said) == 1 and layout.name in said[0] and "meta.npy" in said[0], caplog.messages
    assert project(store, method="pca", cache=cache).cached  # written again, signed, reused


# ------------------------------------------------------------------ 8. a thumbnail of a same-size replacement
def test_a_same_size_replacement_with_its_mtime_kept_gets_a_new_thumbnail(tmp_path):
    """Sabotage: ``thumbs._key`` without st_ino and st_ctime_ns (the red thumbnail reused for the blue image)."""
    img = tmp_path / "0001.bmp"
    red, blue = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    Image.fromarray(red).save(img)
    os.utime(img, ns=(1_600_000_000 * 10**9,) * 2)
    ThumbCache(tmp_path / "thumbs").make([str(img)])
    size = img.stat().st_size
    Image.fromarray(blue).save(img)
    os.utime(img, ns=(1_600_000_000 * 10**9,) * 2)  # as cp -p, rsync -a or tar x leave it
    assert img.stat().st_size == size
    cache = ThumbCache(tmp_path / "thumbs")
    thumb = cache.make([str(img)])[str(img)]
    shown = np.asarray(Image.open(cache.path(thumb.key)).convert("RGB")).mean((0, 1))
    assert cache.reused == 0 and shown[2] > 200 and shown[0] < 50, shown


# ------------------------------------------------------------------ 12. every chart option: one check
def test_every_chart_option_refuses_a_run_s_own_figure_and_a_file_not_ours(store, tmp_path):
    """Finding 12: ``runs compare --out``, ``sweep``/``probe``/``fewshot --png`` replaced a run's own
    ``confusion_test.png`` (featstore-stamped, so the foreign-image check let it), and a text file named without a
    suffix; every chart option now goes through ``compare.check_chart_name`` (leaks' own copy of the checks is gone).
    Sabotage: ``refuse_run_files`` removed from ``check_chart_name`` fails the first half, its ``check_own_output``
    the second."""
    assert cli("fit", "--store", store, "--clf", "logreg", "--validation", "none").exit_code == 0
    (run,) = [p for p in (tmp_path / "s.runs").iterdir() if p.is_dir()]
    assert cli("runs", "--store", store, "show", run.name).exit_code == 0  # writes the run's confusion_*.png
    own = next(run.glob("confusion_*.png"))
    notes = tmp_path / "notes"
    notes.write_text("# my notes\n")
    for args in (
        ("runs", "--store", store, "compare", "--out"),
        ("sweep", "--store", store, "--clf", "logreg", "--param", "logreg:C=1", "--png"),
        ("probe", "--store", store, "--png"),
        ("fewshot", "--store", store, "--png"),
        ("leaks", "--store", store, "--png"),
    ):
        _refused((*args, own), own, "inside the run folder")
        _refused((*args, notes), notes, "is not a chart (PNG) featstore wrote")

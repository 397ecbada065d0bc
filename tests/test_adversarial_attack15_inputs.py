"""Fifteenth attack (issue #19), inputs: path strings of any width and of any object type in a crafted store, symbolic
link loops given as --model, --weights or an output, one outlier row that overflows float32 (or dominates the mean),
scratch folders judged stale by pid alone, and report's private cache left by a kill. Each test failed before its
fix. Stores are synthetic (``writer.write_arrays``) unless the subject is a model.
"""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack14_outputs import _error_lines, store, store_src  # noqa: F401 (fixtures)


# ------------------------------------------------------------------ 2, 10. paths: HDF5 strings of a bounded width
def _replace_paths(path, where, dtype, n):
    with h5py.File(path, "r+") as f:
        g = f[where]
        del g["paths"]
        g.create_dataset("paths", shape=(n,), dtype=dtype, chunks=(1,), maxshape=(None,), compression="gzip")


CRAFTED = {
    "1 GiB wide": ("S1073741824", "fixed-length strings of 1073741824 bytes each, over the 4096-byte limit"),
    "vlen int32": (h5py.vlen_dtype(np.int32), "expected 1-D HDF5 strings"),
    "references": (h5py.ref_dtype, "expected 1-D HDF5 strings"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
@pytest.mark.parametrize("command", ["check", "export"])
def test_crafted_split_paths_are_refused_in_one_line_before_any_read(store, tmp_path, kind, command):  # noqa: F811
    """A split's paths as 1 GiB fixed-length strings (gzip fill: a small file) ended check and export in "memory
    allocation failed for chunk"; as vlen int32 or object references in "dset.asstr() can only be used on datasets
    with an HDF5 string datatype": the layout check accepted any dtype kind "O" or "S"."""
    dtype, said = CRAFTED[kind]
    _replace_paths(store, "s/validation", dtype, 15)
    args = (
        ("check", store)
        if command == "check"
        else ("export", "--store", store, "--split", "validation", "--out", tmp_path / "x.csv")
    )
    result = cli(*args)
    out = no_traceback(result)
    assert result.exit_code != 0 and "s/validation/paths " in out and said in out, out
    assert "Re-extract this split with --overwrite" in out


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_listing_is_refused_before_its_rows_are_read(store, kind):  # noqa: F811
    """The recorded listing (what extract compares after a touched image) with 1 GiB paths: "Unable to allocate 6.00
    GiB"; with vlen int32 paths: the asstr TypeError. Refused by _validate_listing before a row is read."""
    from featstore.errors import StoreError
    from featstore.store.layout import LISTING, _validate_listing

    dtype, said = CRAFTED[kind]
    with h5py.File(store, "r+") as f:
        lg = f["s/train"].create_group("listing")
        for k in LISTING[1:]:
            lg.create_dataset(k, data=np.zeros(30, np.int64))
        lg.create_dataset("paths", shape=(30,), dtype=dtype, chunks=(1,), compression="gzip")
        with pytest.raises(StoreError, match=f"s/train/listing/paths .*{said}"):
            _validate_listing(f["s/train"], "s/train", "redo", 30)


# ------------------------------------------------------------------ 8. a symbolic-link loop: one line, never a traceback
def _loop(tmp_path, name):
    """``name`` -> ``name.other`` -> ``name``: resolve() raised "RuntimeError: Symlink loop from ..." (3.11)."""
    a, b = tmp_path / name, tmp_path / f"{name}.other"
    os.symlink(b, a)
    os.symlink(a, b)
    return a


def test_a_model_or_weights_loop_is_one_line(tmp_path):
    """--model LOOP.keras (SavedModelSpec.from_path) and --weights LOOP (describe_weights_argument) ended in a
    RuntimeError traceback from Path.resolve."""
    from featstore.errors import ConfigError, WeightsError
    from featstore.models.saved import SavedModelSpec
    from featstore.models.weights import describe_weights_argument

    with pytest.raises(ConfigError, match=r"model file .*m1.keras is a symbolic link loop .* remove the link"):
        SavedModelSpec.from_path(_loop(tmp_path, "m1.keras"))
    with pytest.raises(WeightsError, match=r"weights file .*w1 is a symbolic link loop"):
        describe_weights_argument(str(_loop(tmp_path, "w1")))


@pytest.mark.parametrize("command", ["info", "check"])
def test_a_store_loop_is_named_a_loop(tmp_path, command):
    """--store LOOP (featstore info w1) said "store w1 does not exist; create it with featstore extract"."""
    loop = _loop(tmp_path, "s.h5")
    result = cli(command, loop)
    (line,) = _error_lines(no_traceback(result))
    assert result.exit_code == 1 and f"store {loop} is a symbolic link loop" in line, line


def test_what_is_at_names_a_loop(tmp_path):
    """The inputs' shared look (a FIFO given as --weights) called a loop "does not exist" or nothing at all."""
    from featstore.outputs import what_is_at

    assert what_is_at(_loop(tmp_path, "x")) == "a symbolic link loop"


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_output_loop_is_one_line(store, tmp_path, command):  # noqa: F811
    """export --out LOOP.csv and report --out LOOP: "RuntimeError: Symlink loop from ..." tracebacks."""
    loop = _loop(tmp_path, "L.csv" if command == "export" else "L")
    if command == "export":
        result = cli("export", "--store", store, "--split", "train", "--out", loop)
    else:
        (tmp_path / "runs").mkdir()  # a --runs that does not exist is refused first (attack 15, finding 7)
        result = cli("report", "--store", store, "--runs", tmp_path / "runs", "--out", loop)
    (line,) = _error_lines(no_traceback(result))
    assert result.exit_code == 1 and f"--out {loop} is a symbolic link loop" in line, line


# ------------------------------------------------------------------ 12. one outlier row: refused or named, never silent
def _one_huge_row(path, value):
    """Train (30 rows) and validation (15) of 8 normal values; train's row 5 all ``value``."""
    from featstore.store import writer

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("validation", 15)):
        X = rng.normal(size=(n, 8)).astype(np.float32)
        if split == "train":
            X[5] = value
        writer.write_arrays(path, "s", split, X, np.repeat(np.arange(3), n // 3).astype(np.int32), ["a", "b", "c"])
    return path


@pytest.mark.parametrize("command", ["leaks", "similar"])
def test_a_row_whose_norm_overflows_float32_is_refused_by_name(tmp_path, command, recwarn):
    """A row of 3e38: leaks printed a raw "RuntimeWarning: overflow encountered in cast" and a threshold of 0.0000 with
    15 of 15 rows "near-duplicates"; similar gave similarity 1.0000 to every neighbour. Now one line naming the store,
    the split and the row, as for NaN or inf."""
    h5 = _one_huge_row(tmp_path / "h.h5", 3e38)
    args = ["--split", "validation"] if command == "leaks" else ["--split", "train", "--exact", "-k", "3", "train/0"]
    result = cli(command, "--store", h5, *args)
    (line,) = _error_lines(no_traceback(result))
    assert result.exit_code == 1 and f"store {h5}:" in line and "squared norm overflows float32" in line, line
    assert "'train': 1 row(s), e.g. train/5" in line, line
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


def test_a_row_that_dominates_the_mean_is_refused_by_name(tmp_path, caplog):
    """A row of 1e10 (others ~1): leaks said "threshold 0.0000 ... 29 with an exact copy inside train" and "15 of 15
    rows have a near-duplicate" without a word about the row that every other is centred on. A warning was not enough
    (attack 16: the answers were printed anyway); now it is refused, the row named."""
    from featstore.experiments.leaks.search import scan
    from featstore.store.reader import FeatureStore

    h5 = _one_huge_row(tmp_path / "g.h5", 1e10)
    with pytest.raises(StoreError) as err:
        scan(FeatureStore(h5), "s", ["validation"], "train", 1 << 20)
    said = str(err.value)
    assert f"store {h5}: 1 row(s) of 's' in 'train' have a norm over 1000 x the median of its non-zero rows" in said, (
        said
    )
    assert "train/5 (train/5, norm 2.83e+10)" in said and "dominate the mean" in said, said
    with caplog.at_level("WARNING", logger="featstore.experiments.leaks.search"):
        scan(FeatureStore(_one_huge_row(tmp_path / "ok.h5", 30.0)), "s", ["validation"], "train", 1 << 20)
    assert not caplog.records  # a row 30 x the others' size is an outlier, not a broken mean: taken, no warning


def test_fit_cross_validation_names_the_huge_rows_not_the_classifier(tmp_path, recwarn):
    """fit without a validation split: scikit-learn's raw "overflow encountered in divide", then "logreg ... cannot
    predict a cross-validation fold: Input X contains infinity", blaming the classifier for the store's row."""
    h5 = _one_huge_row(tmp_path / "h.h5", 3e38)
    result = cli("fit", "--store", h5, "--validation", "none", "--test", "none", "--runs", tmp_path / "runs")
    (line,) = _error_lines(no_traceback(result))
    assert result.exit_code == 1 and "h.h5:/s/train holds 1 row(s) (5; e.g. train/5) with finite features" in line
    assert "(largest 3e+38): an overflow in the model that extracted them" in line, line
    assert "write_arrays(" in line and "'train', X, y" in line and "cannot predict" not in line, line
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


# ------------------------------------------------------------------ 4. scratch folders: this host's, and old enough
def test_a_scratch_folder_is_removed_only_when_this_hosts_and_old(tmp_path, monkeypatch):
    """A preset snapshot made a second ago by a build on another node sharing TMPDIR (its pid does not exist here) was
    deleted by the next build here: remove_stale judged it by pid alone. Now the host is in the name and only this
    host's folders of gone processes older than STALE_AGE_S go."""
    import tempfile

    from featstore.leftovers import host_tag
    from featstore.models import scratch
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir(mode=0o700)
    dead = _dead_pid()
    old = base / scratch.scratch_name("preset", dead)
    young = base / scratch.scratch_name("preset", dead)
    elsewhere = base / f"preset-{dead}-othernode-0123abcd"
    legacy = base / f"preset-{dead}-0123abcd"  # made before hosts were recorded: its host is unknown
    assert old.name.startswith(f"preset-{dead}-{host_tag()}-")
    for folder in (old, young, elsewhere, legacy):
        folder.mkdir()
        if folder is not young:
            os.utime(folder, (0, 0))
    with scratch.scratch_folder("preset"):
        pass
    assert not old.exists() and young.is_dir() and elsewhere.is_dir() and legacy.is_dir()


def test_a_scratch_folder_in_use_is_kept_though_its_own_mtime_is_old(tmp_path, monkeypatch):
    """Attack 16, finding 6: the age rule read the scratch folder's own mtime, which does not change while its owner
    writes into its subfolders (a report's thumbs/ for its whole run, in another PID namespace): the next report
    deleted it mid-run. The newest mtime of the folder and its direct entries counts now."""
    import tempfile

    from featstore.models import scratch
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir(mode=0o700)
    used, unused = (base / scratch.scratch_name("report", _dead_pid()) for _ in range(2))
    for folder in (used, unused):
        (folder / "thumbs").mkdir(parents=True)
        os.utime(folder / "thumbs", (0, 0))
        os.utime(folder, (0, 0))
    os.utime(used / "thumbs")  # a thumbnail written into it just now
    with scratch.scratch_folder("report"):
        pass
    assert used.is_dir() and not unused.exists()


def test_a_young_or_old_tagged_temporary_file_of_a_gone_pid_is_kept(tmp_path, monkeypatch):
    """Attack 16, finding 2: a live writer in another PID namespace on this host (a container) has a pid that does not
    run here; its temporary file was removed by the next write into that folder (host tag and pid alone). Only one
    unmodified for leftovers.STALE_AGE_S goes now; the host tag is 16 hex digits (6 were shared by a large cluster's
    nodes), and a file with an old 6-digit tag is never this machine's."""
    from featstore import leftovers
    from featstore.outputs import write_text
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    monkeypatch.setattr(leftovers, "_swept", set())
    dead, host = _dead_pid(), leftovers.host_tag()
    assert len(host) == 16 and int(host, 16) >= 0
    young = tmp_path / f".x.csv.fs{dead}-{host}-live.tmp"  # a writer in a container, writing now
    old_tag = tmp_path / f".x.csv.fs{dead}-{host[:6]}-old.tmp"  # earlier versions' tag: not provably ours
    old = tmp_path / f".y.csv.fs{dead}-{host}-gone.tmp"
    for path in (young, old_tag, old):
        path.write_text("x")
    for path in (old_tag, old):
        os.utime(path, (0, 0))
    os.utime(young, (0, time.time() - leftovers.STALE_AGE_S + 30))  # 9.5 minutes
    write_text(tmp_path / "x.csv", "id\n")
    assert young.exists() and old_tag.exists() and not old.exists()


# ------------------------------------------------------------------ 5. report's private cache: removed after a kill
def test_a_killed_reports_private_cache_is_removed_by_the_next(store, tmp_path, monkeypatch):  # noqa: F811
    """report with a cache folder it does not trust uses a private one, removed by atexit: a SIGKILL left
    /tmp/featstore-report-<pid>-* (thumbnails, map layouts) for ever. It is now a scratch folder (models/scratch.py):
    the next report removes those of gone processes."""
    import tempfile

    from featstore.models.scratch import scratch_name
    from featstore.report.site.build import build_report
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir(mode=0o700)
    killed = base / scratch_name("report", _dead_pid())
    (killed / "thumbs").mkdir(parents=True)
    os.utime(killed / "thumbs", (0, 0))
    os.utime(killed, (0, 0))
    (tmp_path / "f.h5.cache").mkdir(mode=0o777)
    os.chmod(tmp_path / "f.h5.cache", 0o777)  # not trusted: the report's caches go to a private folder
    result = build_report(store, out=tmp_path / "site", map_method="pca")
    assert any("caches are not kept" in n for n in result.notes), result.notes
    assert not killed.exists() and not list(base.glob("report-*")), list(base.iterdir())


@pytest.mark.parametrize("kind", ["loop", "file", "missing"])
def test_data_root_that_is_not_a_folder_says_what_it_is(tmp_path, kind):
    """Attack 15, finding 11: a symbolic-link loop given as --data was called missing ("does not exist")."""
    root = tmp_path / "data"
    if kind == "loop":
        os.symlink(tmp_path / "other", root)
        os.symlink(root, tmp_path / "other")
    elif kind == "file":
        root.write_text("not a folder")
    result = cli("extract", "--data", root, "--split", "train", "--store", tmp_path / "f.h5")
    out = no_traceback(result)
    want = {
        "loop": "is a symbolic link loop",
        "file": "is a file, not a folder",
        "missing": "does not exist",
    }
    assert result.exit_code != 0 and f"data root {root} {want[kind]}" in out.replace("\n", " "), out

"""What attack 13 (issue #19) left open, each fixed at its root with a row here that failed before its fix:

1. a folder or FIFO at a run's figure name (``confusion_test.png``): ``runs show`` stopped at it (a folder: nothing
   printed; a FIFO: "choose another path" for a name featstore chose, and the figures after it never drawn);
2. ``similar --build-index`` with a FIFO at the index path said only "choose another path";
3. ``runs --runs FILE`` said "no runs yet";
4. ``--weights FIFO`` / ``--model FIFO`` said "does not exist";
5. a diverging fit in ``sweep`` printed numpy's raw RuntimeWarning line;
6. ``<store>.cache`` was checked for links, then used by its path (a link swapped in after the check was followed),
   and a cache folder someone else made was trusted;
7. a SIGKILLed KerasHub preset build left its ``/tmp/featstore-preset-*`` folder forever.

Synthetic stores and tiny models throughout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.test_adversarial_attack2 import cli, no_traceback
from tests.test_adversarial_attack3 import synthetic_store


def _error_lines(out: str) -> list[str]:
    """The lines of a CLI output that start with ``error:``."""
    return [line for line in out.splitlines() if line.startswith("error:")]


# ============================================================ 1. a folder or FIFO at a run's figure name
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic store and one logreg run folder (its PNGs removed); returns (store, runs, run id)."""
    root = tmp_path_factory.mktemp("fitted")
    store = synthetic_store(root / "f.h5")
    runs = root / "runs"
    assert cli("fit", "--store", store, "--runs", runs).exit_code == 0
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    for png in run.glob("*.png"):
        png.unlink()
    return store, runs, run.name


@pytest.mark.parametrize(
    "name, kind",
    [("confusion_test.png", "folder"), ("confusion_test.png", "fifo"), ("reliability_validation.png", "folder")],
)
def test_runs_show_refuses_one_blocked_figure_name_and_draws_the_others(fitted, tmp_path, name, kind):
    """A folder at ``confusion_test.png`` stopped ``runs show`` before it printed anything; a FIFO there said "choose
    another path" (the name is featstore's, not the user's) and the PNGs after it were never drawn. Now that one name
    is refused in one line naming it and the fix, the figures are printed and the other PNGs written."""
    store, runs, run_id = fitted
    runs = Path(shutil.copytree(runs, tmp_path / "runs"))
    blocked = runs / run_id / name
    blocked.mkdir() if kind == "folder" else os.mkfifo(blocked)
    result = cli("runs", "--store", store, "--runs", runs, "show", run_id)
    out = no_traceback(result)
    assert result.exit_code == 1 and "test: accuracy" in out, out
    (line,) = _error_lines(out)
    assert (
        f"{blocked}: a {'folder' if kind == 'folder' else 'FIFO'}" in line and "of that name is in the way" in line
    ), line
    assert f"Move it out of the run folder and run `featstore runs show {run_id}` again" in line, line
    assert "its other PNGs were written" in line, line
    drawn = {p.name for p in (runs / run_id).glob("*.png")} - {name}
    assert {"confusion_train.png", "confusion_test.png", "reliability_test.png"} - {name} <= drawn, drawn
    assert blocked.is_dir() if kind == "folder" else blocked.is_fifo()  # left as it was


# ============================================================ 3. --runs naming a file
@pytest.mark.parametrize("sub", [[], ["show", "logreg"], ["compare"]])
def test_runs_naming_a_file_is_not_called_empty(tmp_path, sub):
    """``featstore runs --runs notes.txt`` said "no runs yet; fit one ...": the path is a file, not a runs folder."""
    store = synthetic_store(tmp_path / "f.h5")
    runs = tmp_path / "notes.txt"
    runs.write_text("not runs")
    result = cli("runs", "--store", store, "--runs", runs, *sub)
    out = no_traceback(result)
    (line,) = _error_lines(out)
    assert result.exit_code == 1 and f"--runs {runs} is a file, not a runs folder" in line, out
    assert "no runs yet" not in out


@pytest.mark.parametrize(
    "args",
    [["fit"], ["sweep"], ["ensemble", "a", "b"], ["predict", "--run", "a", "img"]],
    ids=lambda a: a[0],
)
def test_commands_that_take_runs_name_a_file_given_as_runs(tmp_path, args):
    """``fit --runs notes.txt`` said "cannot write runs into notes.txt (File exists)", ``ensemble`` and ``predict`` that
    the runs folder "does not exist": before any work, each now says it is a file, not a runs folder."""
    store = synthetic_store(tmp_path / "f.h5")
    runs = tmp_path / "notes.txt"
    runs.write_text("not runs")
    (tmp_path / "img").mkdir()
    args = [str(tmp_path / a) if a == "img" else a for a in args]
    result = cli(*args, "--store", store, "--runs", runs)
    out = no_traceback(result)
    (line,) = _error_lines(out)
    assert result.exit_code == 1 and f"--runs {runs} is a file, not a runs folder" in line, out
    assert runs.read_text() == "not runs"


def test_a_file_at_the_default_runs_folder_is_named(tmp_path):
    store = synthetic_store(tmp_path / "f.h5")
    (tmp_path / "f.runs").write_text("")
    out = no_traceback(cli("runs", "--store", store))
    assert f"the runs folder {tmp_path / 'f.runs'} (beside the store) is a file" in out, out


# ============================================================ 2. a FIFO (or folder, link) at a similarity index file
@pytest.mark.parametrize(
    "name, kind",
    [("vectors.npy", "fifo"), ("model.npz", "fifo"), ("index.json", "fifo"), ("vectors.npy", "folder")],
)
def test_build_index_names_what_is_at_an_index_file(tmp_path, name, kind):
    """``similar --build-index`` with a FIFO at ``<store>.index/<extractor>/<split>/vectors.npy`` said "... is not a
    regular file (a pipe, device or socket); ... Choose another path": no option chooses that path. It now says what is
    there, names the path and the fix (remove it, or search with --exact), before any work."""
    store = synthetic_store(tmp_path / "f.h5")
    folder = tmp_path / "f.h5.index" / "s" / "train"
    folder.mkdir(parents=True)
    blocked = folder / name
    blocked.mkdir() if kind == "folder" else os.mkfifo(blocked)
    result = cli("similar", "--store", store, "--build-index", "train/0")
    out = no_traceback(result)
    (line,) = _error_lines(out)
    what = "a folder" if kind == "folder" else "a FIFO, device or socket, not a regular file"
    assert result.exit_code == 1 and f"similarity index file {blocked} is {what};" in line, out
    assert "Remove it (the index is safe to delete" in line and "`featstore similar --exact`" in line, line
    assert "Choose another path" not in line
    assert blocked.is_dir() if kind == "folder" else blocked.is_fifo()
    assert not {p.name for p in folder.iterdir()} - {name}  # nothing built beside it


# ============================================================ 4. --weights FIFO, --model FIFO: not "does not exist"
@pytest.fixture
def fifo_dir(tmp_path):
    """A folder with a FIFO under each name a test passes (weights, model, preset) and a tiny image root."""
    from tests.conftest import write_data_root

    for name in ("w.weights.h5", "m.keras", "preset"):
        os.mkfifo(tmp_path / name)
    write_data_root(tmp_path / "data")
    return tmp_path


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--model", "vgg16", "--weights", "{d}/w.weights.h5"], "weights file {d}/w.weights.h5 is a FIFO"),
        (["--model", "{d}/m.keras"], "model file {d}/m.keras is a FIFO"),
        (["--model", "{d}/preset"], "model file {d}/preset is a FIFO"),
        (["--model", "hub:{d}/preset"], "{d}/preset is a FIFO (named pipe), not a KerasHub preset folder"),
    ],
    ids=["weights", "keras", "bare-path", "hub-folder"],
)
def test_a_fifo_given_as_weights_or_model_is_not_called_missing(fifo_dir, args, expect):
    """``--weights FIFO`` and ``--model FIFO`` said "does not exist" (``is_file()`` is False for a FIFO), and
    ``--model hub:FIFO`` listed every built-in preset name. Each now says what is there and what to pass."""
    d = fifo_dir
    args = [a.format(d=d) for a in args]
    result = cli("extract", "--data", d / "data", "--store", d / "f.h5", "--image-size", "32", *args)
    out = no_traceback(result)
    (line,) = _error_lines(out)
    assert result.exit_code == 1 and expect.format(d=d) in line, out
    assert "does not exist" not in line and ("not a regular file" in line or "not a KerasHub preset folder" in line)
    assert not (d / "f.h5").exists()


def test_a_fifo_at_a_preset_folders_weights_is_named(tmp_path):
    """A preset folder whose ``model.weights.h5`` is a FIFO was said to have none."""
    import json

    from featstore.errors import ConfigError
    from featstore.models.hub import WEIGHTS_FILE, HubSpec

    folder = tmp_path / "vit"
    folder.mkdir()
    config = {"class_name": "ViTBackbone", "registered_name": "keras_hub>ViTBackbone", "config": {}}
    (folder / "config.json").write_text(json.dumps(config))
    os.mkfifo(folder / WEIGHTS_FILE)
    with pytest.raises(ConfigError, match=f"{folder / WEIGHTS_FILE} is a FIFO .named pipe., not a regular file"):
        HubSpec.from_model(str(folder))


# ============================================================ 5. a diverging fit in sweep: featstore's line, not numpy's
def _featstore(tmp_path: Path, *args) -> tuple[int, str, str]:
    """``featstore ARGS`` in a fresh process with Python's default warning filters (as a user runs it)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "default", "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run(
        [sys.executable, "-m", "featstore.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    return r.returncode, r.stdout, r.stderr


RAW_WARNING = ("RuntimeWarning", "ConvergenceWarning", "LineSearchWarning", ".py:")


def test_sweep_says_a_diverged_fit_in_one_line_and_goes_on(tmp_path):
    """``sweep --clf logreg,knn --param logreg:C=1e-300`` printed numpy's "…/_linear_loss.py:851: RuntimeWarning:
    overflow encountered in cast" with its source line (and scipy's, scikit-learn's), then stopped at the diverged fit:
    the knn fit was never made. Now featstore's one line for the diverged cell, and the other fits go on."""
    import json

    store = synthetic_store(tmp_path / "f.h5")
    runs = tmp_path / "runs"
    args = ["--clf", "logreg,knn", "--param", "logreg:C=1e-300", "--param", "logreg:max_iter=5", "--jobs", "2"]
    rc, out, err = _featstore(tmp_path, "sweep", "--store", store, "--runs", runs, *args)
    assert rc == 0 and not [w for w in RAW_WARNING if w in err], err
    lines = [x for x in err.splitlines() if "diverged:" in x]
    assert len(lines) == 1, err
    (line,) = lines
    assert "sweep: logreg on s left out: logreg with {'C': 1e-300" in line and "fit with other --param" in line, err
    assert "diverged" in out and "knn" in out, out
    (summary,) = runs.glob("sweep-*.json")
    cells = {c["clf"]: c for c in json.loads(summary.read_text())["cells"]}
    assert cells["logreg"]["run"] is None and "diverged" in cells["logreg"]["diverged"]
    assert cells["knn"]["validation"] > 0 and [p.name for p in runs.glob("*/run.json")] == ["run.json"]


def test_fit_says_a_diverged_fit_in_one_line(tmp_path):
    """``fit`` gave featstore's line too, but after the same raw warnings, and worded it twice ("cannot be fitted on
    these 30 rows: logreg with … diverged")."""
    store = synthetic_store(tmp_path / "f.h5")
    args = ["--clf", "logreg", "--param", "C=1e-300", "--param", "max_iter=5"]
    rc, out, err = _featstore(tmp_path, "fit", "--store", store, "--runs", tmp_path / "runs", *args)
    assert rc == 1 and not [w for w in RAW_WARNING if w in err], err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: logreg with {'C': 1e-300") and "cannot be fitted" not in line, line


@pytest.mark.filterwarnings("always")
def test_warnings_are_collected_per_thread():
    """collected_warnings collects the warnings of its own thread only (warnings.catch_warnings is one global state:
    sweep --jobs 2's threads would have taken each other's, or left the recorder installed)."""
    import threading
    import warnings

    from featstore.experiments.selection import collected_warnings

    before = warnings.showwarning
    seen: dict[str, list] = {}
    gate = threading.Barrier(2)

    def work(name: str) -> None:
        with collected_warnings() as got:
            gate.wait()
            warnings.warn(f"from {name}", RuntimeWarning, stacklevel=1)
            gate.wait()
        seen[name] = got

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert {n: [str(m) for _, m in got] for n, got in seen.items()} == {"a": ["from a"], "b": ["from b"]}
    assert warnings.showwarning is before


# ============================================================ 6. <store>.cache written through descriptors, and trusted
def test_a_link_swapped_in_while_a_cache_file_is_written_is_not_followed(tmp_path):
    """cache_folder checked ``<store>.cache`` for links, then write_atomic wrote by path: a link swapped in after the
    check (here while the file is written) took the file wherever it pointed. The file is now made and renamed through
    the folder's descriptor (O_NOFOLLOW | O_DIRECTORY): it lands in the folder that was checked, never elsewhere."""
    from featstore.caches import cache_folder, write_cached

    cache, elsewhere, aside = tmp_path / "f.h5.cache", tmp_path / "elsewhere", tmp_path / "aside"
    (elsewhere / "maps").mkdir(parents=True)
    maps = cache_folder(cache, "maps")

    def swap_then_write(tmp: Path) -> None:
        cache.rename(aside)
        cache.symlink_to(elsewhere)
        tmp.write_bytes(b"layout")

    write_cached(cache, maps / "map-1.npz", swap_then_write, "map cache")
    assert not list((elsewhere / "maps").iterdir())
    assert (aside / "maps" / "map-1.npz").read_bytes() == b"layout" and not list((aside / "maps").glob(".*"))


def test_a_thumbnail_is_not_written_through_a_link_swapped_in_after_the_check(tmp_path, monkeypatch):
    """ThumbCache.make checked its folders, then decoded and wrote by path: a link swapped in at ``<store>.cache``
    between the two received the thumbnail. The write opens the folders again through descriptors: the link is refused
    (the thumbnail is not cached, a warning says so) and nothing reaches where it points."""
    import numpy as np
    from PIL import Image

    from featstore.report.site.thumbs import SIDE, ThumbCache, _key

    cache, elsewhere = tmp_path / "f.h5.cache", tmp_path / "elsewhere"
    image = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(image)
    (elsewhere / "thumbs" / _key(str(image), SIDE)[:2]).mkdir(parents=True)  # the same layout where the link points
    save = Image.Image.save

    def swap_then_save(self, *a, **k):
        if cache.is_dir() and not cache.is_symlink():
            cache.rename(tmp_path / "aside")
            cache.symlink_to(elsewhere)
        return save(self, *a, **k)

    monkeypatch.setattr(Image.Image, "save", swap_then_save)
    (thumb,) = ThumbCache(cache / "thumbs").make([str(image)]).values()
    assert thumb.key is None and not [p for p in elsewhere.rglob("*") if p.is_file()]


@pytest.mark.parametrize("how", ["world-writable", "another user"])
def test_a_cache_folder_featstore_did_not_make_is_not_trusted(tmp_path, how):
    """A ``<store>.cache`` made beforehand by someone else (another user's, or one anyone may write into) was used as
    featstore's own: its planted files read, new files written among them. It is now refused in one line naming it
    and the fix; ``report`` uses a private temporary cache instead, with a note, as for a store in a read-only folder."""
    from featstore.caches import CacheNotTrusted, cache_folder
    from featstore.report.site.build import build_report

    store = synthetic_store(tmp_path / "f.h5")
    cache = tmp_path / "f.h5.cache"
    cache.mkdir()
    if how == "world-writable":
        os.chmod(cache, 0o777)
    elif os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    else:
        os.chown(cache, 4242, 4242)
    with pytest.raises(CacheNotTrusted, match=f"the map cache {cache} was not made by featstore for you .*chmod go-w"):
        cache_folder(cache, "maps", what="map cache")
    result = build_report(store, out=tmp_path / "site", map_method="pca")
    assert (tmp_path / "site" / "index.html").is_file() and not list(cache.iterdir())
    assert any("caches are not kept" in n and "not made by featstore" in n for n in result.notes), result.notes


def test_cache_folders_featstore_makes_are_private_whatever_the_umask(tmp_path):
    """With umask 002 featstore's own cache folders were group-writable, so a cache it made would not be told from one
    it did not: they are made 0700 (attack 23: 0755 let others read the thumbnails of a private store)."""
    from featstore.caches import cache_folder

    old = os.umask(0o002)
    try:
        maps = cache_folder(tmp_path / "f.h5.cache", "maps")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in (maps, maps.parent)} == {"0o700"}
    cache_folder(tmp_path / "f.h5.cache", "maps")  # trusted the next time


# ============================================================ 7. a SIGKILLed preset build leaves no folder for ever
def _dead_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_sigkilled_scratch_folder_is_removed_at_the_next_one(tmp_path):
    """A process killed (SIGKILL) inside a preset build kept its snapshot folder (a hard link or a copy of the weights)
    in /tmp for ever: ``tempfile.TemporaryDirectory`` cleans up only on a normal exit. Scratch folders now live in
    ``<tmp>/featstore-<uid>/`` named with their pid, and the next one removes those whose process is gone."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    code = (
        "import time; from featstore.models.scratch import scratch_folder\n"
        "with scratch_folder('preset') as tmp:\n"
        "    (tmp / 'model.weights.h5').write_bytes(b'w' * 1000); print(tmp, flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    left = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert left.is_dir() and left.parent == tmp_path / f"featstore-{os.geteuid()}"
    os.utime(left / "model.weights.h5", (0, 0))  # old enough (STALE_AGE_S), the folder and what is in it: a young
    os.utime(left, (0, 0))  # one could be another PID namespace's
    run = subprocess.run(
        [sys.executable, "-c", code.replace("time.sleep(60)", "pass")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert not left.exists() and not list(left.parent.iterdir())


def test_only_scratch_folders_of_ended_processes_are_removed(tmp_path, monkeypatch):
    """A planted folder with a dead pid goes; one of a live process (this one, pid 1) and other names stay."""
    import tempfile

    from featstore.models.scratch import scratch_folder, scratch_name

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir(mode=0o700)
    stale, mine, init = (base / scratch_name("preset", pid) for pid in (_dead_pid(), os.getpid(), 1))
    other = base / "notes"
    for folder in (stale, mine, init, other):
        folder.mkdir()
        os.utime(folder, (0, 0))  # all old enough (STALE_AGE_S)
    with scratch_folder("preset") as tmp:
        assert tmp.parent == base and tmp.is_dir()
    assert not stale.exists() and not tmp.exists() and mine.is_dir() and init.is_dir() and other.is_dir()


def test_a_scratch_base_that_is_not_private_is_not_used(tmp_path, monkeypatch, caplog):
    """``<tmp>/featstore-<uid>`` made beforehand by someone else (here open to all, or a link) is not written into: a
    plain temporary folder is used, with a warning."""
    import tempfile

    from featstore.models.scratch import scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir()
    os.chmod(base, 0o777)
    with scratch_folder("preset") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith("featstore-preset-")
    assert "is not a private folder of yours" in caplog.text and not list(base.iterdir())


@pytest.mark.slow
def test_a_preset_build_uses_the_scratch_folder(tmp_path, monkeypatch):
    """HubSpec.build makes its snapshot in the user's scratch folder (removing a stale one first) and leaves nothing."""
    pytest.importorskip("keras_hub")
    import tempfile

    from featstore.models.hub import HubSpec
    from featstore.models.scratch import scratch_name
    from tests.test_hub import save_presets

    folder, _ = save_presets(tmp_path / "presets", ("vit",))["vit"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir(mode=0o700)
    stale = base / scratch_name("preset", _dead_pid())
    stale.mkdir()
    os.utime(stale, (0, 0))  # old enough (STALE_AGE_S)
    spec = HubSpec.from_model(str(folder))
    spec.build(spec.default_size)
    assert not list(base.iterdir())
    assert not list(tmp_path.glob("featstore-preset-*"))


@pytest.mark.filterwarnings("default")  # as a user: shown (here: collected by the fit), not raised
@pytest.mark.parametrize("validation", ["validation", "none"])
def test_a_diverged_setting_in_a_search_is_left_out_of_the_choice(tmp_path, caplog, validation):
    """``--param C=1e-300 --param C=1`` (a search, chosen on validation or by cross-validation on train) ended the whole
    fit at the diverged setting, so a sweep over a wide grid fitted nothing. The setting is left out of the choice (a
    warning names it; the record lists it under ``selection.diverged``) and the others compete."""
    from featstore import fit

    store = synthetic_store(tmp_path / "f.h5")
    rec = fit(store, "logreg", {"C": [1e-300, 1.0], "max_iter": [5]}, validation=validation, runs=tmp_path / "runs")
    assert rec["params"]["C"] == 1.0 and [c["params"]["C"] for c in rec["selection"]["candidates"]] == [1.0]
    assert [d["C"] for d in rec["selection"]["diverged"]] == [1e-300]
    assert "diverged" in caplog.text and "left out of the choice" in caplog.text


def test_caches_without_directory_descriptors_still_refuse_links(tmp_path, monkeypatch):
    """Where the system has no O_NOFOLLOW / dir_fd (Windows), each level is checked by name and files are written with
    write_atomic: a link is still refused, a plain cache still works."""
    from featstore import caches
    from featstore.errors import OutputError

    monkeypatch.setattr(caches, "FD_SAFE", False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "a.h5.cache").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="a.h5.cache is a symbolic link"):
        caches.cache_folder(tmp_path / "a.h5.cache", "maps")
    with pytest.raises(OutputError, match="a.h5.cache is a symbolic link"):
        caches.write_cached(tmp_path / "a.h5.cache", tmp_path / "a.h5.cache" / "x", lambda t: t.write_text("x"))
    assert not list(elsewhere.iterdir())
    maps = caches.cache_folder(tmp_path / "b.h5.cache", "maps")
    caches.write_cached_text(maps.parent, maps / "m.json", "{}")
    assert (maps / "m.json").read_text() == "{}"

"""Attack 35 #3: a run's model file was hashed in full before any size check (a sparse 1 TiB ``model.skops`` held
``runs show``, ``runs evaluate`` and ``predict --run`` for ~17 min each), and hashed by name after an ``lstat``: a FIFO
renamed onto the name in between made the hashing wait forever. Now ``verify_file`` opens the file once, bounds it
from its ``fstat`` (the size run.json records, else ``MAX_ARTIFACT_BYTES``; a sparse file is refused) and hashes that
descriptor. Synthetic stores and a tiny logreg run throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featstore.runs import artifacts
from featstore.runs.files import BrokenRunError
from tests.test_adversarial_attack2 import cli, no_traceback
from tests.test_adversarial_attack3 import synthetic_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic store and one logreg run; returns (store, runs folder, run id)."""
    root = tmp_path_factory.mktemp("bounds")
    store = synthetic_store(root / "s.h5")
    runs = root / "runs"
    assert cli("fit", "--store", store, "--runs", runs, "--validation", "none").exit_code == 0
    (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    return store, runs, run.name


@pytest.fixture
def run(fitted, tmp_path):
    """A private copy of the fitted run: (store, runs, run id, its folder, its run.json)."""
    store, runs, run_id = fitted
    runs = Path(shutil.copytree(runs, tmp_path / "runs"))
    folder = runs / run_id
    return store, runs, run_id, folder, json.loads((folder / "run.json").read_text())


def _edit_artifact(folder: Path, **changes) -> dict:
    """Rewrite run.json's artifact record with ``changes`` (a value None removes the key); returns the record."""
    rec = json.loads((folder / "run.json").read_text())
    art = {**rec["artifact"], **changes}
    rec["artifact"] = {k: v for k, v in art.items() if v is not None}
    (folder / "run.json").write_text(json.dumps(rec, indent=1))
    return rec["artifact"]


def _listing(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _refused(folder: Path, artifact: dict) -> tuple[str, float]:
    """The BrokenRunError check_artifact raises, and how long it took."""
    start = time.monotonic()
    with pytest.raises(BrokenRunError) as err:
        artifacts.check_artifact(folder, artifact)
    return str(err.value), time.monotonic() - start


def test_a_fit_records_its_model_file_size_and_the_run_loads(run):
    store, runs, run_id, folder, rec = run
    art = rec["artifact"]
    assert art["size"] == (folder / art["file"]).stat().st_size > 0
    assert artifacts.check_artifact(folder, art) == folder / art["file"]
    assert artifacts.load_estimator(folder, art) is not None
    out = no_traceback(result := cli("runs", "--store", store, "--runs", runs, "show", run_id))
    assert result.exit_code == 0 and "error" not in out, out


def test_an_old_record_without_a_size_still_loads(run):
    store, runs, run_id, folder, rec = run
    art = _edit_artifact(folder, size=None)
    assert "size" not in art
    assert artifacts.load_estimator(folder, art) is not None
    out = no_traceback(result := cli("runs", "--store", store, "--runs", runs, "evaluate", run_id, "--split", "test"))
    assert result.exit_code == 0 and "error" not in out, out


def test_a_model_file_of_another_size_is_refused_before_it_is_read(run):
    """A changed file (here a byte longer) is refused on its size, in one line naming both sizes and the fix."""
    store, runs, run_id, folder, rec = run
    model = folder / rec["artifact"]["file"]
    size = model.stat().st_size
    with open(model, "ab") as fh:
        fh.write(b"\0")
    message, _ = _refused(folder, rec["artifact"])
    assert f"run artifact {model} is {size + 1:,} bytes, the run recorded {size:,}" in message, message
    assert f"Remove the folder {folder} and fit again" in message, message


def test_a_sparse_terabyte_model_file_is_refused_at_once_with_its_size_recorded(run):
    """The attack: ``truncate -s 1T model.skops``. The recorded size refuses it without reading a byte, and every
    command that verifies the run says so in one line."""
    store, runs, run_id, folder, rec = run
    model = folder / rec["artifact"]["file"]
    os.truncate(model, 1 << 40)
    before = _listing(folder)
    message, took = _refused(folder, rec["artifact"])
    assert took < 5 and "the run recorded" in message and "1,099,511,627,776 bytes" in message, (took, message)
    for sub in (["show", run_id], ["evaluate", run_id, "--split", "test"]):
        start = time.monotonic()
        out = no_traceback(result := cli("runs", "--store", store, "--runs", runs, *sub))
        assert time.monotonic() - start < 20 and result.exit_code == 1, out
        assert f"run artifact {model} is 1,099,511,627,776 bytes, the run recorded" in out, out
    assert _listing(folder) == before  # nothing in the run folder changed


def test_a_sparse_terabyte_model_file_of_an_old_record_is_refused_by_the_cap(run):
    """Without a recorded size (a run written before sizes were, or a record edited to drop it): MAX_ARTIFACT_BYTES."""
    store, runs, run_id, folder, rec = run
    model = folder / rec["artifact"]["file"]
    os.truncate(model, 1 << 40)
    message, took = _refused(folder, _edit_artifact(folder, size=None))
    assert took < 5 and f"run artifact {model} is 1.1 TB (1 TiB), more than the 68.7 GB (64 GiB)" in message, (
        took,
        message,
    )


@pytest.mark.parametrize("recorded", [False, True])
def test_a_sparse_model_file_under_the_cap_is_refused_as_sparse(run, recorded):
    """16 GiB of holes: under the cap, and hashed for ~17 s before; refused on its allocated blocks, also when the
    record was edited to claim that very size."""
    store, runs, run_id, folder, rec = run
    model = folder / rec["artifact"]["file"]
    os.truncate(model, 16 << 30)
    art = _edit_artifact(folder, size=(16 << 30) if recorded else None)
    message, took = _refused(folder, art)
    assert took < 5 and f"run artifact {model} is a sparse file (17.2 GB (16 GiB) with" in message, (took, message)
    assert f"Remove the folder {folder} and fit again" in message, message


def test_a_record_with_a_size_that_is_no_count_is_refused(run):
    store, runs, run_id, folder, rec = run
    for bad in (-1, "12", True, 1.5):
        with pytest.raises(BrokenRunError, match="sizes that are whole numbers"):
            artifacts.check_artifact_record(folder, {**rec["artifact"], "size": bad})


_SWAP = """
import os, sys
from pathlib import Path
import featstore.runs.files as files
from featstore.runs import artifacts

folder, fifo = Path(sys.argv[1]), Path(sys.argv[2])
art = {"file": "model.skops", "format": "skops", "sha256": sys.argv[3]}
looked = files.regular_file

def regular_file_then_swap(folder, name, what):
    path = looked(folder, name, what)  # the lstat saw the regular file; a FIFO now takes its name
    os.rename(fifo, path)
    return path

files.regular_file = regular_file_then_swap
try:
    artifacts.check_artifact(folder, art)
except files.BrokenRunError as exc:
    print("refused:", exc)
"""


def test_a_fifo_renamed_onto_the_model_file_after_the_look_is_refused_not_waited_on(run, tmp_path):
    """A child process (the hashing would hold the GIL in a thread) checks the run while a FIFO is renamed onto the
    model's name between the lstat and the opening: it must refuse, not wait for a writer."""
    store, runs, run_id, folder, rec = run
    fifo = folder / "swap.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, "-c", _SWAP, str(folder), str(fifo), rec["artifact"]["sha256"]]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("check_artifact waited on a FIFO renamed onto the model file")
    model = folder / "model.skops"
    # the file held since before the swap is not what the name leads to now: refused (attack 35 #4's hold)
    assert done.returncode == 0 and f"refused: run artifact {model} was replaced while featstore read" in done.stdout, (
        done
    )
    assert model.is_fifo()  # left as it was


def test_a_dense_head_records_its_meta_size_and_a_changed_head_json_is_refused_on_it(fitted, tmp_path):
    """The keras format's head.json is bounded the same way (``meta_size``; MAX_META_BYTES for an old record)."""
    from featstore import fit

    store, _, _ = fitted
    rec = fit(store, "dense", {"epochs": [1]}, runs=tmp_path / "runs")
    folder, art = tmp_path / "runs" / rec["id"], dict(rec["artifact"])
    meta = folder / art["meta_file"]
    assert art["format"] == "keras" and art["meta_size"] == meta.stat().st_size > 0
    assert artifacts.load_estimator(folder, art) is not None
    size = meta.stat().st_size
    with open(meta, "a") as fh:
        fh.write(" ")
    message, _ = _refused(folder, art)
    assert f"run artifact metadata {meta} is {size + 1:,} bytes, the run recorded {size:,}" in message, message
    os.truncate(meta, 1 << 30)  # an old record: no meta_size, and 1 GiB is more than a head.json ever is
    message, took = _refused(folder, {k: v for k, v in art.items() if k != "meta_size"})
    assert took < 5 and f"run artifact metadata {meta} is 1.07 GB (1 GiB), more than the 67.1 MB (64 MiB)" in message, (
        message
    )


def test_sparse_stored_predictions_are_refused_before_they_are_hashed(run):
    """predictions.npz goes through verify_file too: no size recorded nor capped (read in blocks, any size), but a
    sparse one is refused at once (hashing 16 GiB of holes took ~17 s before)."""
    from featstore.runs.folder import verify_predictions

    store, runs, run_id, folder, rec = run
    os.truncate(folder / "predictions.npz", 16 << 30)
    start = time.monotonic()
    with pytest.raises(BrokenRunError, match=r"stored predictions .*predictions.npz is a sparse file") as err:
        verify_predictions(folder, rec)
    assert time.monotonic() - start < 5, str(err.value)

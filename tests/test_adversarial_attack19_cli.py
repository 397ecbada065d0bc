"""Attack 19, commands: predict --out replacing any file and its advice, names' line breaks in printed tables, empty
option values, class names parsed as mathtext in charts, a non-UTF-8 split name in ``runs evaluate`` (findings 3, 4,
5, 7, 8 and 9 of branch attack19's REPORT.md). Stores are synthetic (no TensorFlow: predict's model is a stand-in
where images must be classified); each test failed before its fix."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import featstore.experiments.predict as predict_mod
from featstore import fit
from featstore.errors import ConfigError
from featstore.experiments.predict import _check_out, predict
from featstore.outputs import terminal_safe
from featstore.runs.folder import find_run
from featstore.store import writer
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``(store, runs folder, run id)``: a synthetic 3-split store and one logreg run (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("a19")
    store = synthetic_store(root / "f.h5")
    return store, root / "f.runs", fit(store, "logreg")["id"]


@pytest.fixture
def images(tmp_path):
    """A folder of two 8-pixel PNGs."""
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def stand_in(monkeypatch):
    """The run's model replaced by one that needs no TensorFlow: every image is class 0 at 0.9."""

    class Model:
        size = 8

        def proba(self, images):
            return np.tile([0.9, 0.05, 0.05], (len(images), 1))

    monkeypatch.setattr(predict_mod, "kind_of", lambda rec: SimpleNamespace(for_images=lambda *a: Model()))


# ------------------------------------------------------------------ 9. predict --out replaced any file
@pytest.mark.parametrize(
    "name, content",
    [
        ("model.keras", b"PK\x03\x04 a saved Keras model"),
        ("train.py", b"import keras  # my training script\n"),
        ("notes.md", b"# notes\n"),
        ("table.csv", b"id,score\n1,0.5\n"),  # a CSV, but not one predict wrote
        ("empty.csv", b""),
    ],
)
def test_predict_out_never_replaces_a_file_that_is_not_its_own_csv(made, images, stand_in, tmp_path, name, content):
    """Finding 9: ``--out model.keras`` (``train.py``, ``notes.md``) printed "wrote 2 predictions" and the file then
    started ``path,label,probability,error``: the user's model was gone. Now a name not ending in .csv, or an existing
    file whose first line is not predict's header, is refused before any work, naming the file; it is unchanged."""
    store, runs, run = made
    target = tmp_path / name
    target.write_bytes(content)
    result = cli("predict", "--run", run, "--store", store, "--out", target, images)
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert target.read_bytes() == content
    assert str(target) in out and len(out.strip().splitlines()) == 1, out
    assert ("ending in .csv" if target.suffix != ".csv" else "is not a predictions CSV") in out, out


def test_predict_out_replaces_its_own_csv(made, images, stand_in, tmp_path):
    """What is still allowed: a new .csv name, and a CSV predict wrote before (its header first), which is replaced."""
    store, runs, run = made
    out = tmp_path / "p.CSV"
    predict(run, [images], store=store, out=out)
    first = out.read_bytes()
    assert first.startswith(b"path,label,probability,error\r\n") and first.count(b"\r\n") == 3
    predict(run, [images / "0.png"], store=store, out=out)
    assert out.read_bytes().count(b"\r\n") == 2


# ------------------------------------------------------------------ 4. predict --out's advice was refused
def test_predict_out_on_a_run_folder_suggests_a_name_predict_accepts(made, tmp_path):
    """Finding 4: ``--out f.runs/<run>`` said "give a CSV file name, e.g. f.runs/<run>/predictions.csv", which predict
    then refused as inside the run folder. The name suggested is now outside the runs folder, and accepted."""
    store, runs, run = made
    for given in (runs / run, runs, runs / "notes.txt"):
        result = cli("predict", "--run", run, "--store", store, "--out", given, tmp_path)
        out = no_traceback(result)
        assert result.exit_code == 1 and "e.g. " in out, out
        suggested = out.split("e.g. ")[1].split(",")[0].split()[0]
        assert suggested == str(runs.parent / "predictions.csv"), out
        _check_out(predict_mod.Path(suggested))  # the advice, followed, is not refused


# ------------------------------------------------------------------ 3. line breaks in names printed raw
def test_predict_table_keeps_one_line_per_image(made, monkeypatch):
    """Finding 3: an image named ``x.png\\nPASSPORT.png\\tdog\\t0.9999\\nz.png`` printed three lines, the last a row
    for a file ``z.png`` that was never read. Every name is now one cell: its line breaks and tabs escaped."""
    store, runs, run = made
    rows = [
        {"path": "new/x.png\nPASSPORT.png\tdog\t0.9999\nz.png", "label": "cat", "probability": 0.99, "error": ""},
        {"path": "new/a.png", "label": "c\r\nat", "probability": 0.5, "error": ""},
        {"path": "new/b\n.png", "label": "", "probability": float("nan"), "error": "cannot\nread"},
    ]
    monkeypatch.setattr(predict_mod, "predict", lambda *a, **k: rows)
    out = no_traceback(cli("predict", "--run", run, "--store", store, "x"))
    lines = out.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 3 for line in lines), out
    assert lines[0].startswith("new/x.png\\x0aPASSPORT.png\\x09dog") and "\\x0d\\x0a" in lines[1], out


@pytest.mark.filterwarnings("ignore:Tight layout not applied")  # a long class name in a 2-class matrix
def test_runs_show_and_info_keep_a_class_name_on_its_line(tmp_path):
    """Finding 3: a class folder named ``cat\\n  test: accuracy 1.0000 (FAKE)`` printed a line of its own in `runs
    show` (and `info`), read as the run's test figure."""
    fake = "cat\n  test: accuracy 1.0000 (FAKE)"
    store = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    for split in ("train", "validation", "test"):
        y = np.arange(12) % 2
        X = (rng.normal(0, 1, (12, 4)) + y[:, None]).astype(np.float32)
        writer.write_arrays(store, "s", split, X, y, [fake, "plain"])
    run = fit(store, "logreg")["id"]
    for args in (("runs", "show", run, "--store", store), ("info", store)):
        out = no_traceback(cli(*args))
        assert not [line for line in out.splitlines() if line.lstrip().startswith("test: accuracy 1.0000")], out
        assert terminal_safe(fake) in out, out


# ------------------------------------------------------------------ 5. empty option values
@pytest.mark.parametrize(
    "args, option",
    [
        (("predict", "--run", "", "x.png"), "--run"),
        (("fit", "--validation", ""), "--validation"),
        (("fit", "--test", ""), "--test"),
        (("fit", "--train", " "), "--train"),
        (("runs", "show", ""), "RUN_ID"),
        (("runs", "evaluate", "", "--split", "test"), "RUN_ID"),
        (("runs", "evaluate", "RUN", "--split", ""), "--split"),
        (("extract", "--layer", "", "--data", "nowhere"), "--layer"),
        (("extract", "--name", "", "--data", "nowhere"), "--name"),
        (("export", "--split", "", "--out", "x.csv"), "--split"),
    ],
)
def test_an_empty_option_value_is_refused_naming_the_option(made, tmp_path, args, option):
    """Finding 5: ``predict --run ''`` (an unset $RUN) predicted with the only run (every id starts with ''),
    ``fit --validation ''`` chose by cross-validation, ``fit --test ''`` recorded a run with no test figures, ``extract
    --layer '' --name ''`` took the defaults. Each is one line naming the option now, before any work."""
    store_src, runs_src, run = made
    store = shutil.copy(store_src, tmp_path / "f.h5")
    shutil.copytree(runs_src, tmp_path / "f.runs")
    before = sorted(p.name for p in (tmp_path / "f.runs").iterdir())
    args = [run if a == "RUN" else a for a in args]
    result = cli(*args, "--store", store)
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert out.startswith(f"error: {option} ") and "empty" in out and len(out.strip().splitlines()) == 1, out
    assert sorted(p.name for p in (tmp_path / "f.runs").iterdir()) == before  # no run recorded


@pytest.mark.parametrize("run_id", ["", "  "])
def test_find_run_refuses_an_empty_id(made, run_id):
    """Finding 5, the library: ``find_run('')`` returned the only run (a prefix of every id)."""
    _, runs, _ = made
    with pytest.raises(ConfigError, match="run id is empty"):
        find_run(run_id, runs)


# ------------------------------------------------------------------ 7. class names parsed as mathtext
def test_chart_labels_from_data_are_never_mathtext(monkeypatch, tmp_path):
    """Finding 7: a class named ``$\\foo$`` ended `runs show` in matplotlib's ParseFatalException (no PNG), and
    ``price $5 or $9`` was drawn as maths. Every text from data in a chart is now drawn as written."""
    from matplotlib.axes import Axes
    from matplotlib.text import Text

    from featstore.plots import confusion_png

    names = ["$\\foo$", "price $5 or $9", "x$^{2}$"]
    drawn: list[str] = []
    real = Axes.set_xticks

    def spy(self, ticks, labels=None, **kw):
        drawn.extend(labels or [])
        return real(self, ticks, labels, **kw)

    monkeypatch.setattr(Axes, "set_xticks", spy)
    confusion_png(np.eye(3, dtype=int), names, "run $x$ on test", tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert [Text()._preprocess_math(t) for t in drawn] == [(n, False) for n in names]


def test_runs_show_draws_a_class_named_like_mathtext(tmp_path):
    """Finding 7 through the command: `runs show` writes its confusion matrices, no traceback."""
    store = tmp_path / "f.h5"
    rng = np.random.default_rng(1)
    for split in ("train", "validation", "test"):
        y = np.arange(12) % 2
        writer.write_arrays(store, "s", split, (rng.normal(0, 1, (12, 4)) + y[:, None]).astype(np.float32), y,
                            ["$\\foo$", "price $5 or $9"])  # fmt: skip
    run = fit(store, "logreg")["id"]
    result = cli("runs", "show", run, "--store", store)
    out = no_traceback(result)
    assert result.exit_code == 0 and "confusion_test.png" in out, out


# ------------------------------------------------------------------ 8. runs evaluate --split with a non-UTF-8 byte
def test_runs_evaluate_names_a_split_with_a_non_utf8_byte_in_one_line(made, tmp_path):
    """Finding 8: ``runs evaluate RUN --split 'te\\udcffst'`` ended in ``UnicodeEncodeError`` (h5py encoding the
    group name); it now says the store has no such split, and which it has, as fit does."""
    store_src, runs_src, run = made
    store = shutil.copy(store_src, tmp_path / "f.h5")
    shutil.copytree(runs_src, tmp_path / "f.runs")
    result = cli("runs", "evaluate", run, "--split", "te\udcffst", "--store", store)
    out = no_traceback(result)
    assert result.exit_code == 1 and "has no split 'te\\udcffst'" in out and "test, train, validation" in out, out

"""Attack 80 #2 and #3 (the lead): a run.json integer no float holds is a broken record named in one line (it ended
`runs evaluate` and the whole `featstore runs` listing in an OverflowError), and a recorded figure's split extracted
again from the same image paths is said to be that, with the command that scores it as it is now (it said "other
rows" and advised the very --store given)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.runs import record, trainstore
from featstore.runs.schema import finite
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays

C = ["a", "b"]


def _store(path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("validation", 20), ("test", 20)):
        y = np.arange(n) % 2
        write_arrays(path, "synthetic", split, (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32), y, C)
    return path


@pytest.mark.parametrize("where", [("inputs", "far_reference", "floor"), ("calibration", "floor")])
def test_an_integer_no_float_holds_is_one_line_naming_the_run(tmp_path, where):
    store = _store(tmp_path / "s.h5")
    rec = fit(store, "logreg", runs=tmp_path / "runs", test="none")
    path = tmp_path / "runs" / rec.id / "run.json"
    text = path.read_text()
    data = json.loads(text)
    node = data
    for key in where[:-1]:
        node = node[key]
    assert where[-1] in node, node
    node[where[-1]] = 12345
    path.write_text(json.dumps(data).replace("12345", "9" * 401))
    got = CliRunner().invoke(app, ["runs", "--store", str(store), "--runs", str(tmp_path / "runs")])
    assert got.exception is None or isinstance(got.exception, SystemExit), got.output
    assert "401 digits" in got.output and rec.id in got.output, got.output
    got = CliRunner().invoke(
        app, ["runs", "evaluate", rec.id, "--split", "test", "--store", str(store), "--runs", str(tmp_path / "runs")]
    )
    assert got.exit_code == 1 and "401 digits" in got.output and "Traceback" not in got.output, got.output
    assert not finite(10**400) and finite(3)


def test_a_split_extracted_again_from_the_same_paths_is_said_so(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.h5")
    fs = FeatureStore(store)
    paths, _ = record.split_identity(fs, "synthetic", "test")
    rec = {
        "id": "logreg-1",
        "store": str(store),
        "predictions": {"test": {"paths_sha256": paths, "listing_sha256": "9f"}},
    }
    monkeypatch.setattr(record, "split_identity", lambda *a: (paths, "8e"))  # an image listing, another one
    trainstore._MATCHED.clear()
    why = trainstore.scored_elsewhere(rec, fs, "synthetic", ["test"])["test"]
    assert "was extracted again since the run's figures there were recorded" in why, why
    assert f"featstore runs evaluate logreg-1 --split test --store {store}" in why and "or pass --store" not in why
    monkeypatch.setattr(record, "split_identity", lambda *a: ("0" * 64, "8e"))  # other paths
    trainstore._MATCHED.clear()
    why = trainstore.scored_elsewhere({**rec, "store": "/elsewhere/f.h5"}, fs, "synthetic", ["test"])["test"]
    assert "holds other images" in why and "or pass --store /elsewhere/f.h5" in why, why

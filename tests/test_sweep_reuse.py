"""A re-run of `featstore sweep` reuses the cells recorded already as the very fit each makes (after Ctrl-C, a kill,
a full disk, or simply run again), and fits every other cell: another request, fingerprint, split version or store."""

import json
import logging

import numpy as np
import pytest

import featstore
from featstore.experiments import sweep as sweep_module
from featstore.store.writer import synthetic_attrs, write_arrays

CLFS = ["logreg", "knn"]


def _split(path, name, split, seed, n=24, d=6):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int32)
    X = (rng.normal(size=(n, d)) + y[:, None] * 2.0).astype(np.float32)
    write_arrays(path, name, split, X, y, ["a", "b"], attrs=synthetic_attrs((d,), model="synthetic"))


def _store(path, seed=0, names=("one", "two")):
    """Two extractors of the same synthetic layout (``seed``: other features, same paths and shapes)."""
    for i, name in enumerate(names):
        for j, split in enumerate(("train", "validation", "test")):
            _split(path, name, split, seed * 100 + i * 10 + j)
    return path


def _runs(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture
def counted(monkeypatch):
    """The sweep's fits, counted as ``(extractor, classifier)``."""
    calls, real = [], sweep_module.fit

    def fit(store, clf, *a, **k):
        calls.append((k["extractor"], clf))
        return real(store, clf, *a, **k)

    monkeypatch.setattr(sweep_module, "fit", fit)
    return calls


@pytest.fixture
def why(caplog):
    """Why each recorded run was not reused (the debug lines of featstore.experiments.sweep_reuse)."""
    caplog.set_level(logging.DEBUG, logger="featstore.experiments.sweep_reuse")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "featstore.experiments.sweep_reuse"]


def test_second_identical_sweep_reuses_every_cell_and_records_no_run(tmp_path, monkeypatch, counted):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    first = featstore.sweep(store, CLFS, runs=root)
    before = [n for n in _runs(root)]
    assert len(counted) == 4 and first["reused"] == []
    reads = []
    for method in ("load", "iter_batches"):  # the store's features, whole or in blocks
        real = getattr(featstore.FeatureStore, method)
        monkeypatch.setattr(
            featstore.FeatureStore,
            method,
            lambda self, split="train", *a, _real=real, **k: (reads.append(split), _real(self, split, *a, **k))[1],
        )
    second = featstore.sweep(store, CLFS, runs=root)
    assert len(counted) == 4, counted  # no fit
    assert reads == []  # no feature read: not even test, which the winner holds already
    assert _runs(root) == before  # no new run
    assert {c["run"] for c in second["cells"]} == {c["run"] for c in first["cells"]}
    assert len(second["reused"]) == 4 and all(c["reused"] for c in second["cells"])
    assert second["winner"]["id"] == first["winner"]["id"] and second["winner"]["test"] == first["winner"]["test"]
    saved = json.loads((root / f"{second['id']}.json").read_text())
    assert sorted(r["run"] for r in saved["reused"]) == sorted(c["run"] for c in first["cells"])
    from featstore.report.runs import sweep_table

    assert "reused: 4 of 4 cells" in sweep_table(second)


def test_interrupted_sweep_rerun_fits_only_the_rest(tmp_path, monkeypatch, counted):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    k, real = 3, sweep_module.fit  # (the counting fit)

    def interrupted(store, clf, *a, **kw):
        if len(counted) == k:
            raise KeyboardInterrupt
        return real(store, clf, *a, **kw)

    monkeypatch.setattr(sweep_module, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        featstore.sweep(store, CLFS, runs=root)
    assert len(_runs(root)) == k
    monkeypatch.setattr(sweep_module, "fit", real)
    done = list(counted)
    s = featstore.sweep(store, CLFS, runs=root)
    assert counted[k:] == [c for c in [(n, c) for n in ("one", "two") for c in CLFS] if c not in done]
    assert len(counted) == 4 and len(s["reused"]) == k and len(_runs(root)) == 4


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"params": {"logreg": {"C": [0.5]}}}, "another given"),
        ({"search": True}, "another search"),
        ({"validation": "none"}, "another validation"),
    ],
)
def test_another_request_refits(tmp_path, counted, why, change, reason):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], extractors=["one"], runs=root)
    s = featstore.sweep(store, ["logreg"], extractors=["one"], runs=root, **change)
    assert len(counted) == 2 and s["reused"] == []
    assert any(reason in line for line in why()), why()
    featstore.sweep(store, ["logreg"], extractors=["one"], runs=root, **change)
    assert len(counted) == 2  # the same changed request again: reused


def test_another_fingerprint_refits(tmp_path, counted, why):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    from featstore.provenance import fingerprint

    run = featstore.sweep(store, ["logreg"], extractors=["one"], runs=root)["winner"]["id"]
    record = root / run / "run.json"
    rec = json.loads(record.read_text())
    attrs = {**rec["extractor_attrs"], "weights_digest": "0" * 64}  # another extractor's features, same split versions
    attrs["fingerprint"] = fingerprint({k: v for k, v in attrs.items() if k != "fingerprint"})
    record.write_text(json.dumps({**rec, "extractor_attrs": attrs, "fingerprint": attrs["fingerprint"]}))
    s = featstore.sweep(store, ["logreg"], extractors=["one"], runs=root)
    assert len(counted) == 2 and s["reused"] == []
    assert any("another extractor fingerprint" in line for line in why()), why()


def test_re_extracted_split_refits_its_extractor_only(tmp_path, counted, why):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    featstore.sweep(store, CLFS, runs=root)
    _split(store, "one", "validation", 1)  # the very same rows written again: another version of the split
    s = featstore.sweep(store, CLFS, runs=root)
    assert counted[4:] == [("one", c) for c in CLFS]
    assert sorted((r["extractor"], r["clf"]) for r in s["reused"]) == [("two", c) for c in sorted(CLFS)]
    assert any("other train or validation images or versions" in line for line in why()), why()


def test_another_store_sharing_the_runs_folder_refits(tmp_path, counted, why):
    root = tmp_path / "shared"
    featstore.sweep(_store(tmp_path / "a.h5"), CLFS, runs=root)
    s = featstore.sweep(_store(tmp_path / "b.h5", seed=7), CLFS, runs=root)  # same layout, other features
    assert len(counted) == 8 and s["reused"] == [] and len([n for n in _runs(root)]) == 8
    assert any("other train or validation images or versions" in line for line in why()), why()


def test_no_reuse_refits_every_cell(tmp_path, counted):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    featstore.sweep(store, CLFS, runs=root)
    s = featstore.sweep(store, CLFS, runs=root, reuse=False)
    assert len(counted) == 8 and s["reused"] == [] and len(_runs(root)) == 8


def test_broken_run_is_not_reused(tmp_path, counted, why):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    run = featstore.sweep(store, ["knn"], extractors=["one"], runs=root)["winner"]["id"]
    preds = root / run / "predictions.npz"
    preds.write_bytes(preds.read_bytes()[:-10] + b"0" * 10)  # damaged after it was recorded
    s = featstore.sweep(store, ["knn"], extractors=["one"], runs=root)
    assert len(counted) == 2 and s["reused"] == []
    assert any("broken" in line for line in why()), why()


def test_cli_no_reuse_and_table(tmp_path, counted):
    from typer.testing import CliRunner

    from featstore.cli import app

    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    args = ["sweep", "--store", str(store), "--runs", str(root), "--clf", "logreg", "--extractor", "one"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and len(counted) == 1, out.output
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and len(counted) == 1 and "reused: 1 of 1 cells" in out.output, out.output
    out = CliRunner().invoke(app, [*args, "--no-reuse"])
    assert out.exit_code == 0 and len(counted) == 2 and "reused" not in out.output, out.output


def test_byte_copy_of_the_store_reuses_and_evaluates_test(tmp_path, counted):
    """A copy of the store (same split versions, same rows) is the same fit's data: reused, and its test evaluated."""
    import shutil

    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    first = featstore.sweep(store, CLFS, runs=root, show_test=True)
    shutil.copyfile(store, tmp_path / "copy.h5")
    s = featstore.sweep(tmp_path / "copy.h5", CLFS, runs=root, show_test=True)
    assert len(counted) == 4 and len(s["reused"]) == 4
    assert [c["test"] for c in s["cells"]] == [c["test"] for c in first["cells"]]


@pytest.mark.parametrize("reuse", [True, False])
def test_ctrl_c_line_says_what_a_rerun_does(tmp_path, monkeypatch, counted, reuse):
    """The Ctrl-C line said a re-run fits every cell again; now it reuses the runs it lists (and, with --no-reuse, it
    says that one refits them), and the re-run does what it said."""
    import re

    from typer.testing import CliRunner

    from featstore.cli import app

    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    real = sweep_module.fit

    def interrupted(store, clf, *a, **kw):
        if len(counted) == 2:
            raise KeyboardInterrupt
        return real(store, clf, *a, **kw)

    monkeypatch.setattr(sweep_module, "fit", interrupted)
    args = ["sweep", "--store", str(store), "--runs", str(root), "--clf", ",".join(CLFS)]
    out = CliRunner().invoke(app, args + ([] if reuse else ["--no-reuse"]))
    line = next(x for x in out.output.splitlines() if x.startswith("interrupted:"))
    listed = re.findall(r"\b[a-z_]+-[0-9a-f]{6}\b", line)
    assert out.exit_code == 130 and len(listed) == 2 and sorted(listed) == _runs(root), out.output
    said = "reuses these cells and fits only the others"
    assert (said in line and "fits every cell again" in line) if reuse else "--no-reuse` fits every cell again" in line
    monkeypatch.setattr(sweep_module, "fit", real)
    s = featstore.sweep(store, CLFS, runs=root, reuse=reuse)
    assert sorted(r["run"] for r in s["reused"]) == (sorted(listed) if reuse else [])
    assert len(counted) == (4 if reuse else 6)


def test_run_lacking_the_figures_the_choice_reads_refits(tmp_path, counted, why):
    store, root = _store(tmp_path / "s.h5"), tmp_path / "runs"
    run = featstore.sweep(store, ["knn"], extractors=["one"], runs=root)["winner"]["id"]
    record = root / run / "run.json"
    rec = json.loads(record.read_text())
    del rec["metrics"]["validation"]  # e.g. a run of an older featstore, or edited
    record.write_text(json.dumps(rec))
    s = featstore.sweep(store, ["knn"], extractors=["one"], runs=root)
    assert len(counted) == 2 and s["reused"] == [] and s["cells"][0]["validation"] is not None
    assert any("no 'validation' figures" in line for line in why()), why()


def test_augmented_sweep_reuses_only_a_fit_on_the_same_copies(tmp_path, counted, why):
    from featstore import ExtractorConfig, extract
    from tests.conftest import write_images

    data, store, root = tmp_path / "data", tmp_path / "s.h5", tmp_path / "runs"
    for (split, seed), n in zip((("train", 1), ("validation", 2), ("test", 3)), (4, 2, 2)):
        write_images(data, split, {"cat": n, "dog": n}, seed=seed)
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=3, pooling="avg", layer="block3_pool")
    extract(data, "train", store, cfg, batch_size=4, augment=1)
    for split in ("validation", "test"):
        extract(data, split, store, cfg, batch_size=4)
    featstore.sweep(store, ["knn"], runs=root, augmented=True)
    assert len(featstore.sweep(store, ["knn"], runs=root, augmented=True)["reused"]) == 1 and len(counted) == 1
    assert featstore.sweep(store, ["knn"], runs=root)["reused"] == [] and len(counted) == 2  # the plain rows only
    assert any("other augmented copies" in line for line in why()), why()


def test_paths_digest_in_blocks_is_the_runs_digest(tmp_path):
    from featstore.runs.record import digest_paths, split_identity

    fs = featstore.FeatureStore(_store(tmp_path / "s.h5", names=("one",)))
    for rows in (1, 5, 24, 1000):
        assert split_identity(fs, "one", "train", rows)[0] == digest_paths(fs.paths("train", "one")), rows

"""Cached augmented copies (`extract --augment K`) and fits on them (`fit --augmented`): layout, seeds, resume, refusals, protocol."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ExtractorConfig, FeatureStore, extract, fit
from featstore.cli import app
from featstore.errors import ConfigError, StoreError
from featstore.experiments import fit as runs_mod
from featstore.experiments import scoring
from featstore.experiments.fit import _digest_paths
from featstore.extraction import copies as augcopies
from featstore.report.tables import runs_table, store_tree
from featstore.store import writer
from featstore.store.check import check_store
from tests.conftest import write_images

K, BATCH = 2, 4
CFG = ExtractorConfig(
    model="vgg16", image_size=32, weights="none", seed=3, pooling="avg", layer="block3_pool"
)  # 1 KiB rows


def _data(root):
    data = root / "data"
    for (split, seed), n in zip((("train", 1), ("validation", 2), ("test", 3)), (4, 2, 2)):
        write_images(data, split, {"cat": n, "dog": n, "fox": n}, seed=seed)
    return data


def _copies(path, **kw):
    """Features, labels, paths and copy index of the train split's augmented copies."""
    with h5py.File(path, "r") as f:
        ag = f["vgg16/train/augmented"]
        n = int(ag.attrs["commit"][0])
        return ag["features"][:n], ag["labels"][:n], list(ag["paths"].asstr()[:n]), ag["copy"][:n]


@pytest.fixture(scope="module")
def aug_store(tmp_path_factory):
    """train (12 rows) with K=2 copies, validation (6) and test (6); the data root beside it."""
    root = tmp_path_factory.mktemp("aug")
    data = _data(root)
    path = root / "features.h5"
    extract(data, "train", path, CFG, batch_size=BATCH, augment=K)
    for split in ("validation", "test"):
        extract(data, split, path, CFG, batch_size=BATCH)
    return path, data


def test_copies_have_the_layout_index_labels_and_paths_of_the_split(aug_store, tmp_path):
    path, data = aug_store
    fs = FeatureStore(path)
    X, y = fs.load("train")
    Xa, ya, pa, copy = _copies(path)
    n = len(y)
    assert Xa.shape == (K * n, *X.shape[1:]) and Xa.dtype == X.dtype
    np.testing.assert_array_equal(copy, np.repeat(np.arange(1, K + 1), n))  # copy-major, marked 1..K
    np.testing.assert_array_equal(ya, np.tile(y, K))
    assert pa == fs.paths("train") * K
    assert fs.splits() == ["test", "train", "validation"]  # the copies are never a split
    a = fs.augmentation("train")
    assert (a["augment_copies"], a["augment_spec"], a["augment_seed"], a["source_rows"], a["rows"], a["complete"]) == (
        K,
        "flip=horizontal,rotate=0.1,zoom=0.2",
        0,
        n,
        K * n,
        True,
    )
    assert fs.augmentation("validation") is None
    assert not np.array_equal(Xa[:n], X) and not np.array_equal(Xa[:n], Xa[n:])  # augmented, and each copy drawn anew
    np.testing.assert_array_equal(fs.load("train", augmented=True)[0], Xa)
    np.testing.assert_array_equal(fs.copies("train"), copy)
    # the plain split is exactly what an extraction without --augment writes
    plain = tmp_path / "plain.h5"
    extract(data, "train", plain, CFG, batch_size=BATCH)
    np.testing.assert_array_equal(FeatureStore(plain).load("train")[0], X)
    assert check_store(path) == []
    assert (
        "/augmented: 2 copies (flip=horizontal,rotate=0.1,zoom=0.2, seed 0), rows 24, failed 0, complete"
        in store_tree(str(path))
    )


def test_without_augmentation_the_copies_equal_the_plain_rows(aug_store, tmp_path, monkeypatch):
    _, data = aug_store
    monkeypatch.setattr(augcopies, "augment_batch", lambda model, images: images.astype(np.float32))
    path = tmp_path / "identity.h5"
    extract(data, "train", path, CFG, batch_size=BATCH, augment=K)
    X = FeatureStore(path).load("train")[0]
    np.testing.assert_array_equal(
        _copies(path)[0], np.concatenate([X] * K)
    )  # same decode, resize and model as the split


def test_same_seed_gives_bit_identical_copies_another_seed_other_copies(aug_store, tmp_path):
    path, data = aug_store
    again, other = tmp_path / "again.h5", tmp_path / "other.h5"
    extract(data, "train", again, CFG, batch_size=BATCH, augment=K)
    extract(data, "train", other, CFG, batch_size=BATCH, augment=K, augment_seed=1)
    for a, b in zip(_copies(path), _copies(again)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(_copies(path)[0], _copies(other)[0])
    r = extract(data, "train", again, CFG, batch_size=BATCH, augment=K)  # complete: nothing recomputed
    assert r.skipped and r.augmented.skipped and r.augmented.rows == 24


def test_interrupted_copies_resume_bit_identical(aug_store, tmp_path, monkeypatch):
    path, data = aug_store
    broken = tmp_path / "broken.h5"
    real_commit = writer.SplitWriter.commit
    calls = {"copies": 0}

    def commit_then_die(self, *args, **kwargs):
        if self.key.endswith("/augmented"):
            calls["copies"] += 1
            if calls["copies"] == 4:  # copy 2's first batch: written, then killed before its commit
                with h5py.File(self.store.path, "a") as f:
                    feats = f[self.names[0]][self.key]["features"]
                    feats.resize(feats.shape[0] + 3, axis=0)
                raise KeyboardInterrupt
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(writer.SplitWriter, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract(data, "train", broken, CFG, batch_size=BATCH, augment=K)
    monkeypatch.setattr(writer.SplitWriter, "commit", real_commit)
    assert (
        FeatureStore(broken).augmentation("train")["rows"] == 12
        and not FeatureStore(broken).augmentation("train")["complete"]
    )
    assert any("uncommitted rows" in p for p in check_store(broken))
    with pytest.raises(StoreError, match="not complete"):
        fit(broken, "logreg", runs=tmp_path / "r", augmented=True)
    r = extract(data, "train", broken, CFG, batch_size=BATCH, augment=K)
    assert r.skipped and r.augmented.resumed_from == 12 and r.augmented.written == 12 and r.augmented.rows == 24
    for a, b in zip(_copies(path), _copies(broken)):
        np.testing.assert_array_equal(a, b)
    assert check_store(broken) == []


@pytest.mark.parametrize(
    "kw, needle",
    [
        (
            {"augment_spec": "flip"},
            "augment_spec: the store's copies have 'flip=horizontal,rotate=0.1,zoom=0.2', this run asks for 'flip=horizontal'",
        ),
        ({"augment_seed": 5}, "augment_seed: the store's copies have 0, this run asks for 5"),
        ({"augment": 3}, "augment_copies: the store's copies have 2, this run asks for 3"),
    ],
)
def test_copies_made_otherwise_are_refused_showing_both_sides(aug_store, tmp_path, kw, needle):
    path, data = aug_store
    mine = tmp_path / "mine.h5"
    shutil.copy(path, mine)
    kw = {"augment": K, **kw}
    with pytest.raises(StoreError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        extract(data, "train", mine, CFG, batch_size=BATCH, **kw)
    with h5py.File(mine, "a") as f:  # a partial set of copies: a resume with other options is refused the same way
        f["vgg16/train/augmented"].attrs["complete"] = False
    with pytest.raises(StoreError, match="--overwrite"):
        extract(data, "train", mine, CFG, batch_size=BATCH, **kw)
    r = extract(data, "train", mine, CFG, batch_size=BATCH, overwrite=True, **kw)  # replaces the split and its copies
    assert FeatureStore(mine).augmentation("train")["augment_copies"] == kw["augment"] and r.augmented.written > 0


@pytest.mark.parametrize("split", ["validation", "test", "val", "Test"])
def test_copies_of_validation_or_test_data_are_refused(aug_store, split):
    with pytest.raises(ConfigError, match="--augment is for training data only"):
        extract(aug_store[1], split, aug_store[0], CFG, augment=2)


@pytest.mark.parametrize("k", [0, -1, 101, 10**9, True, 1.5])
def test_bad_copy_counts_are_refused_before_any_work(tmp_path, k):
    said = "give the number of augmented copies to cache, from 1 to 100"
    if isinstance(k, (bool, float)):  # not a whole number: the API's argument check names the argument (attack 54 #5)
        said = rf"extract\(\): augment={k} is a {type(k).__name__}; give a whole number"
    with pytest.raises(ConfigError, match=said):
        extract(tmp_path / "missing", "train", tmp_path / "f.h5", CFG, augment=k)
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize(
    "spec, needle", [("", "--augment-spec is empty"), ("blur", "choose one of: flip"), ("zoom=3", "at most 1")]
)
def test_bad_specs_and_seeds_are_refused(tmp_path, spec, needle):
    with pytest.raises(ConfigError, match=needle):
        extract(tmp_path / "missing", "train", tmp_path / "f.h5", CFG, augment=2, augment_spec=spec)
    with pytest.raises(ConfigError, match="--augment-seed -1"):
        extract(tmp_path / "missing", "train", tmp_path / "f.h5", CFG, augment=2, augment_seed=-1)


def test_fit_trains_on_the_copies_and_never_scores_on_them(aug_store, tmp_path, monkeypatch):
    path, _ = aug_store
    fs = FeatureStore(path)
    n, nv, nt = (len(fs.labels(s)) for s in ("train", "validation", "test"))
    fitted, scored, loads = [], [], []
    real_fit_one, real_metrics, real_load = runs_mod._fit_one, scoring.run_metrics_blocks, FeatureStore.load

    def spy_fit_one(clf, params, X, y, val, *rest):
        fitted.append((len(X), None if val is None else len(val[0])))
        return real_fit_one(clf, params, X, y, val, *rest)

    def spy_load(self, split="train", extractor=None, **kw):
        loads.append((split, kw.get("augmented", False)))
        return real_load(self, split, extractor, **kw)

    monkeypatch.setattr(runs_mod, "_fit_one", spy_fit_one)
    monkeypatch.setattr(
        scoring, "run_metrics_blocks", lambda *a: (lambda r: scored.append(len(r[0])) or r)(real_metrics(*a))
    )
    monkeypatch.setattr(FeatureStore, "load", spy_load)
    rec = fit(path, "logreg", {"C": [0.1, 1.0]}, runs=tmp_path, augmented=True)
    assert (
        fitted == [(n * (K + 1), nv)] * 2
    )  # every candidate fitted on train + copies, chosen on the plain validation split
    assert scored == [nv, nt, n]  # metrics of validation, test and train (its plain rows): never an augmented row
    assert [s for s, aug in loads if aug] == ["train"]  # copies are read for train only
    assert rec["splits"] == {"train": n, "validation": nv, "test": nt}
    assert rec["augmented"] == {
        "split": "train",
        "copies": K,
        "spec": "flip=horizontal,rotate=0.1,zoom=0.2",
        "seed": 0,
        "rows": K * n,
        "plain_rows": n,
        "train_rows": (K + 1) * n,
    }
    for split in ("validation", "test"):  # the stored predictions are of the plain splits' images
        assert rec["predictions"][split]["paths_sha256"] == _digest_paths(fs.paths(split))
        assert rec["predictions"][split]["n"] == len(fs.labels(split))
    plain = fit(path, "logreg", runs=tmp_path)
    assert "augmented" not in plain
    table = runs_table([rec, plain])
    assert "+2 aug copies" in table.splitlines()[1] and "aug" not in table.splitlines()[2]


def test_fit_refusals(aug_store, tmp_path):
    path, data = aug_store
    bare = tmp_path / "bare.h5"
    extract(data, "train", bare, CFG, batch_size=BATCH)
    with pytest.raises(
        StoreError, match="has no augmented copies; make them with `featstore extract --split train --augment K`"
    ):
        fit(bare, "logreg", runs=tmp_path / "r", augmented=True)
    extract(
        data, "train", bare, CFG, batch_size=BATCH, augment=1
    )  # the plain split is kept, only the copies are computed
    # no validation: the search cross-validates on train with an image and its copies in one fold
    rec = fit(bare, "logreg", {"C": [0.1, 1.0]}, runs=tmp_path / "r", augmented=True)
    assert "copies of one image kept in one fold" in rec["selection"]["method"]
    assert "copies of one image kept in one fold" in rec.calibration["fitted_on"] or rec.calibration["method"] == "none"
    rec = fit(bare, "logreg", runs=tmp_path / "r", augmented=True)  # one setting: calibrated out of fold, grouped
    assert rec["augmented"]["train_rows"] == 24


def test_streamed_fit_reads_the_copies_too(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "CHUNK_BYTES", 4096)  # 4-row chunks of 1 KiB rows: a few KB of budget streams
    data = _data(tmp_path)
    path = tmp_path / "chunky.h5"
    extract(data, "train", path, CFG, batch_size=BATCH, augment=K)
    extract(data, "validation", path, CFG, batch_size=BATCH)
    from featstore.experiments import streaming

    seen, real = [], streaming.train_blocks

    def spy(*args, **kw):
        rows = 0
        for X, y in real(*args, **kw):
            rows += len(y)
            yield X, y
        seen.append(rows)

    from featstore.store.reader import FeatureStore

    first_pass, real_counter = [], FeatureStore.nonfinite_rows

    def spy_counter(self, *args, **kw):  # the first pass (the scaler's) also counts NaN/inf rows: count what it sees
        counter = real_counter(self, *args, **kw)
        real_block = counter.block

        def block(X):
            if counter.split == "train":  # validation is checked in a pass of its own
                first_pass.append(len(X))
            return real_block(X)

        counter.block = block
        return counter

    monkeypatch.setattr(streaming, "train_blocks", spy)
    monkeypatch.setattr(FeatureStore, "nonfinite_rows", spy_counter)
    rec = fit(path, "sgd", {"epochs": [2]}, memory_budget="20KB", runs=tmp_path / "r", augmented=True)
    assert rec["streamed"] and rec["augmented"]["train_rows"] == 36
    assert seen == [36, 36]  # two epochs, each over train + both copies
    assert sum(first_pass) == 36  # and the scaler's first pass over train + both copies, before any epoch
    assert rec["splits"]["validation"] == 6


def test_cli_extract_fit_info_export_and_help(aug_store, tmp_path):
    runner = CliRunner()
    path, data = aug_store
    mine = tmp_path / "cli.h5"
    args = [
        "extract",
        "--data",
        data,
        "--split",
        "train",
        "--store",
        mine,
        "--model",
        "vgg16",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--layer",
        "block3_pool",
        "--pooling",
        "avg",
        "--seed",
        "3",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    r = runner.invoke(app, [str(a) for a in args + ["--augment", "2"]])
    assert r.exit_code == 0, r.output
    assert "wrote 24 rows of augmented copies (2 copies, 24 rows, 0 failed)" in r.output
    r = runner.invoke(app, [str(a) for a in args + ["--augment", "2"]])
    assert "its 2 augmented copies were already complete (24 rows); nothing to do" in r.output
    r = runner.invoke(app, [str(a) for a in args + ["--augment", "0"]])
    assert r.exit_code == 1 and "from 1 to 100" in r.output
    r = runner.invoke(app, [str(a) for a in args[:4] + ["validation"] + args[5:] + ["--augment", "2"]])
    assert r.exit_code == 1 and "training data only" in r.output
    r = runner.invoke(
        app, ["export", "--store", str(mine), "--split", "train", "--augmented", "--out", str(tmp_path / "c.npz")]
    )
    assert r.exit_code == 0, r.output
    z = np.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(z["copy"], np.repeat([1, 2], 12))
    np.testing.assert_array_equal(z["features"], _copies(mine)[0].reshape(24, -1))
    r = runner.invoke(app, ["fit", "--store", str(mine), "--augmented", "--runs", str(tmp_path / "r")])
    assert r.exit_code == 0 and "plus its 2 augmented copies" in r.output
    for cmd in ("extract", "fit", "sweep", "export"):
        assert "--augment" in runner.invoke(app, [cmd, "--help"]).output


def test_compressed_copies_commit_whole_batches_across_copy_boundaries(aug_store, tmp_path, monkeypatch):
    _, data = aug_store
    sizes, real_commit = [], writer.SplitWriter.commit

    def spy(self, features, labels, *args, **kw):
        if self.key.endswith("/augmented"):
            sizes.append(len(labels))
        return real_commit(self, features, labels, *args, **kw)

    monkeypatch.setattr(writer.SplitWriter, "commit", spy)
    path = tmp_path / "gzip.h5"
    extract(
        data, "train", path, CFG, batch_size=5, augment=K, compression="gzip"
    )  # 12 rows: a batch spans copies 1 and 2
    assert sizes == [5, 5, 5, 5, 4]  # every commit but the last is one whole chunk, written once
    with h5py.File(path, "r") as f:
        assert (
            f["vgg16/train/augmented/features"].chunks[0] == 5
            and f["vgg16/train/augmented/features"].compression == "gzip"
        )
    np.testing.assert_array_equal(_copies(path)[3], np.repeat([1, 2], 12))
    assert check_store(path) == []


# ------------------------------------------------------------------ crafted copies: add a row to CRAFTED_COPIES_CASES
def _aug(fn):
    def damage(f):
        fn(f["vgg16/train/augmented"])

    return damage


def _edit(key, change):
    def damage(ag):
        ds = ag[key]
        ds[...] = change(ds[()])

    return damage


def _set(**attrs):
    def damage(ag):
        for k, v in attrs.items():
            ag.attrs[k] = v

    return damage


def _relink(key, link):
    def damage(ag):
        del ag[key]
        ag[key] = link

    return damage


def _first(value):
    def change(a):
        a = a.copy()
        a[0] = value
        return a

    return change


# (id, damage(h5py.File), fragment): fit --augmented, export --augmented and check each refuse or report it with the fragment,
# info shows it broken or refuses, a resume never tracebacks; nothing trains on rows that are not copies of the split's rows
CRAFTED_COPIES_CASES = [
    ("labels-not-the-splits", _aug(_edit("labels", lambda y: (y + 1) % 3)), "another label than the split's row"),
    ("paths-not-the-splits", _aug(_edit("paths", _first(b"validation/cat/x.png"))), "not one of the split's rows"),
    ("copy-index-reversed", _aug(_edit("copy", lambda c: c[::-1])), "out of order"),
    ("copy-index-out-of-range", _aug(_edit("copy", _first(7))), "copy index outside 1..2"),
    ("rows-repeated", _aug(_edit("paths", lambda p: np.concatenate([p[:1], p[:-1]]))), "out of order"),
    (
        "k-over-the-maximum",
        _aug(_set(augment_copies=10**15, n_images=12 * 10**15)),
        "augment_copies 1000000000000000 is over 100",
    ),
    ("complete-but-short", _aug(_set(augment_copies=3, n_images=36)), "marked complete with 24 of 36 rows done"),
    ("seed-negative", _aug(_set(augment_seed=-3)), "augment_seed -3 is not in"),
    ("spec-unknown", _aug(_set(augment_spec="blur=9")), "augment_spec 'blur=9' is not a spec"),
    ("source-split-other", _aug(_set(source_split="validation")), "source_split 'validation' is not the split 'train'"),
    ("classes-other", _aug(_set(class_names=["cat", "dog", "fox", "owl"])), "class_names"),
    ("listing-other", _aug(_set(listing_sha256="0" * 64)), "listing_sha256"),
    ("copy-external-link", _aug(_relink("copy", h5py.ExternalLink("/etc/passwd", "/x"))), "copy (ExternalLink)"),
]


@pytest.mark.parametrize("case_id,damage,fragment", CRAFTED_COPIES_CASES, ids=[c[0] for c in CRAFTED_COPIES_CASES])
def test_crafted_copies_are_refused_everywhere(aug_store, tmp_path, case_id, damage, fragment):
    from featstore import FeatstoreError, export

    path, data = aug_store
    bad = tmp_path / "bad.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        damage(f)
    pattern = re.escape(fragment)
    with pytest.raises(FeatstoreError, match=pattern):
        fit(bad, "logreg", runs=tmp_path / "r", augmented=True)
    with pytest.raises(FeatstoreError, match=pattern):
        export(bad, "train", tmp_path / "c.npz", augmented=True)
    assert not (tmp_path / "c.npz").exists()
    problems = check_store(bad)
    assert any(fragment in p for p in problems), problems
    try:  # info reads attributes only: it marks the copies broken or refuses the store, or shows them (content lies)
        store_tree(str(bad))
    except FeatstoreError as exc:
        assert fragment in str(exc)
    try:  # a resume either refuses with a message or finds the copies complete; never another exception
        extract(data, "train", bad, CFG, batch_size=BATCH, augment=K)
    except FeatstoreError:
        pass


def test_stray_augmented_objects_are_reported(aug_store, tmp_path):
    path, _ = aug_store
    bad = tmp_path / "bad.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        f.copy(f["vgg16/train/augmented"], f["vgg16/validation"], name="augmented")  # copies of an evaluation split
        f["vgg16/test"].create_dataset("augmented", data=np.arange(3))  # a dataset where a group of copies would be
    problems = check_store(bad)
    assert any(
        "/vgg16/validation/augmented: augmented copies of 'validation', a validation or test split" in p
        for p in problems
    ), problems
    assert any("/vgg16/test/augmented is not a group of augmented copies" in p for p in problems), problems
    with pytest.raises(ConfigError, match="--augment is for training data only"):
        fit(bad, "logreg", runs=tmp_path / "r", augmented=True, train="validation", validation="train")


def test_check_names_the_extract_that_makes_the_copies_again(aug_store, tmp_path):
    """Attack 69 #4: check's lines on augmented copies advised "re-extract this split with --overwrite", which drops
    the copies; fit's refusal names --augment K --augment-spec --augment-seed (66 #5), and so does check now."""
    path = tmp_path / "features.h5"
    shutil.copy(aug_store[0], path)
    with h5py.File(path, "a") as f:
        f["vgg16/train/augmented/features"][3] = np.nan
    (line,) = [p for p in check_store(path) if "NaN" in p]
    assert "/vgg16/train/augmented" in line and f"--split train --augment {K} --augment-spec S" in line, line

"""Attack 80 #1 (fixEB): a test split made of a few of train's rows and a few of validation's (each a minority alone,
most of test together) was scored by finetune, probe and sweep with two "a few (duplicate images?)" notes: each
comparison was judged alone. The rows rule now judges the union (a row of either counted once): refused by finetune,
probe and fewshot, withheld by a sweep, said by a fit; a union that is a minority stays a note."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from featstore import extract
from featstore.errors import ConfigError
from featstore.store.writer import write_arrays

from .test_adversarial_attack78_fixDW import _refit_store
from .test_adversarial_attack79_fixDX import CFG, _copy, refused_before_training

JOINT = "are rows of 'train' ({}) or of 'validation' ({}), the rows the choice was made on"


def _between(path, from_train: int, from_validation: int, n: int = 40, d: int = 8, seed: int = 0):
    """train and validation of ``n`` rows; test: ``from_train`` of train's rows, then ``from_validation`` of
    validation's (the same labels: one pattern), the rest new."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int32)
    Xt, Xv, Xs = ((rng.normal(size=(n, d)) + y[:, None]).astype(np.float32) for _ in range(3))
    a, b = from_train, from_train + from_validation
    Xs[:a], Xs[a:b] = Xt[:a], Xv[a:b]
    for split, X in (("train", Xt), ("validation", Xv), ("test", Xs)):
        write_arrays(path, "first", split, X, y, ["a", "b"])


def test_probe_refuses_a_test_mostly_of_train_and_validation_together(tmp_path):
    from featstore.experiments.probe import probe

    s = tmp_path / "s.h5"
    _between(s, 15, 15)
    with pytest.raises(ConfigError) as err:
        probe(s, knn=False, runs=tmp_path / "runs")
    line = str(err.value)
    assert "30 of the 40 rows of 'test' (first) " + JOINT.format(15, 15) in line and "\n" not in line, line
    assert "duplicate images" not in line and "--test" in line, line


def test_sweep_withholds_a_test_mostly_of_train_and_validation_together(tmp_path):
    from featstore.experiments.sweep import sweep

    s = tmp_path / "s.h5"
    _between(s, 15, 15)
    w = sweep(s, ["logreg"], runs=tmp_path / "runs")["winner"]
    assert w.get("test") is None, w
    assert "30 of the 40 rows of 'test' (first) " + JOINT.format(15, 15) in w["test_withheld"], w


def test_fewshot_refuses_a_test_mostly_of_train_and_validation_together(tmp_path):
    from featstore.experiments.fewshot import fewshot

    s = tmp_path / "s.h5"
    _between(s, 15, 15)
    with pytest.raises(ConfigError, match=r"30 of the 40 rows of 'test' \(first\) are rows of 'train' \(15\) or of"):
        fewshot(s, "dense", shots=(1,), trials=1, runs=tmp_path / "runs")


def test_fit_notes_the_union_of_train_and_validation(tmp_path):
    from featstore.experiments.fit import fit

    s = tmp_path / "s.h5"
    _between(s, 15, 15)
    rec = fit(s, "knn", {"n_neighbors": [1, 3]}, runs=tmp_path / "runs")  # a fit notes, never refuses
    notes = " ".join(rec.get("notes") or [])
    assert "30 of the 40 rows of 'test' " + JOINT.format(15, 15) in notes, notes
    assert "mostly not held-out figures" in notes, notes


def test_one_of_each_in_forty_stays_a_note(tmp_path):
    from featstore.experiments.probe import probe
    from featstore.experiments.sweep import sweep

    s = tmp_path / "s.h5"
    _between(s, 1, 1)
    notes = " ".join(probe(s, knn=False, runs=tmp_path / "runs")["notes"])
    assert "1 of the 40 rows of 'test' (first) are rows of 'train'" in notes, notes
    assert "1 of the 40 rows of 'test' (first) are rows of 'validation', the rows the choice" in notes, notes
    w = sweep(s, ["logreg"], runs=tmp_path / "sweep")["winner"]
    assert w.get("test") is not None and not w.get("test_withheld"), w
    assert "(duplicate images?)" in w["test_note"], w
    from featstore.experiments.fit import fit

    notes = " ".join(fit(s, "knn", {"n_neighbors": [1, 3]}, runs=tmp_path / "fit").get("notes") or [])
    assert "2 of the 40 rows of 'test' " + JOINT.format(1, 1) in notes and "at most 2 rows" in notes, notes


def test_the_union_holds_one_training_split_at_a_time(tmp_path, monkeypatch):
    """The decision's union (train's rows, then validation's) is counted with one split's digests alive at a time."""
    import weakref

    from featstore.experiments.training_rows import verdict
    from featstore.runs import fittedrows
    from featstore.store.reader import FeatureStore

    s = tmp_path / "s.h5"
    _refit_store(s, n_val=300, from_train=30, from_val=30)
    live, peak = set(), [0]
    init = fittedrows.TrainingRows.__init__

    def counted(self, *a, **kw):
        init(self, *a, **kw)
        live.add(id(self))
        weakref.finalize(self, live.discard, id(self))
        peak[0] = max(peak[0], len(live))

    monkeypatch.setattr(fittedrows.TrainingRows, "__init__", counted)
    v = verdict(FeatureStore(s), "g", "train", "test", chosen_on="validation")
    assert (v.kind, v.shared, v.rows) == ("refuse", 60, 100) and [p.shared for p in v.parts] == [30, 30], v
    assert peak[0] == 1


def test_a_part_over_the_caps_keeps_the_others_count_and_is_said_once(tmp_path, monkeypatch):
    """validation over the caps (MAX_ROWS lowered): train's 40 of test's 100 rows noted, validation's 30 unknown."""
    from featstore.experiments.probe import probe
    from featstore.runs import fittedrows

    s = tmp_path / "s.h5"
    _refit_store(s, n_val=400, from_train=40, from_val=30)
    monkeypatch.setattr(fittedrows, "MAX_ROWS", 300)
    notes = probe(s, knn=False, runs=tmp_path / "runs")["notes"]
    said = " ".join(notes)
    assert "40 of the 100 rows of 'test' (g) are rows of 'train'" in said, notes
    assert sum("not compared with those of 'validation'" in n for n in notes) == 1, notes


def _three_and_three(data):
    """test: 3 of train's cat images and 3 of validation's dog images in place of its own (6 of its 8 rows)."""
    for i, ext in ((0, "png"), (1, "jpg"), (2, "png")):
        shutil.copy2(data / "train" / "cat" / f"img_{i:03d}.{ext}", data / "test" / "cat" / f"img_{i:03d}.{ext}")
        shutil.copy2(data / "validation" / "dog" / f"img_{i:03d}.{ext}", data / "test" / "dog" / f"img_{i:03d}.{ext}")


def test_finetune_refuses_a_test_mostly_of_train_and_validation_together(_finetune_source_once, tmp_path, monkeypatch):
    ft = _copy(_finetune_source_once, tmp_path)
    _three_and_three(ft["data"])
    for split in ("train", "validation", "test"):  # one batch layout for every split: the rows match bit for bit
        extract(ft["data"], split, ft["store"], CFG, batch_size=4, overwrite=True)
    line = refused_before_training(ft, monkeypatch)
    assert "6 of the 8 rows of 'test' (vgg16) are rows of 'train'" in line and "'validation' (3)" in line, line
    assert "--split test --overwrite" in line and "\n" not in line, line

"""Attack 79 #2: finetune chose its epoch (early stopping) and its temperature on validation and scored a test folder
that was validation's very images, unmarked, with a note saying "judge by test". Its test split is now compared with
the rows it is fitted on and the rows it chose on, before any training: refused where most are shared, noted where a
few are, said where they could not be compared; "judge by test" only where test was compared and shares none."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from featstore import ExtractorConfig, extract
from featstore.errors import ConfigError
from featstore.experiments import finetune as ft_module
from featstore.experiments import finetune_rows
from featstore.experiments.finetune import FinetuneConfig, finetune
from featstore.runs import fittedrows
from featstore.runs.folder import get_run
from featstore.store.reader import FeatureStore

from .conftest import write_images

CFG = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7)  # finetune_source's extractor


def _copy(src, tmp_path, test_from=None) -> dict:
    """A copy of the session's fine-tuning source whose test folder is ``test_from(data)``'s doing, extracted again."""
    shutil.copytree(src["root"], tmp_path / "c", symlinks=True)
    data, store = tmp_path / "c" / "data", tmp_path / "c" / src["store"].relative_to(src["root"])
    if test_from is not None:
        test_from(data)
        extract(data, "test", store, CFG, overwrite=True)  # the same batch layout as validation's: the same bits
    return {**src, "data": data, "store": store}


def _validation_as_test(data):
    shutil.rmtree(data / "test")
    shutil.copytree(data / "validation", data / "test")  # validation's 4 + 4 images, in the same order


def _one_of_validation(data):
    for name in ("cat/img_000.png",):  # one image of test is validation's (a duplicate)
        shutil.copy2(data / "validation" / name, data / "test" / name)


def _judged_by_test(notes) -> bool:
    return any("judge by test" in n for n in notes)


def refused_before_training(ft: dict, monkeypatch) -> str:
    """finetune's refusal of ``ft``'s copy, training and caching made to fail were either reached first."""

    def never(*a, **k):
        raise AssertionError("trained or cached before the rows rule refused")

    monkeypatch.setattr(ft_module, "train", never)
    monkeypatch.setattr(ft_module, "cached_cut", never)
    with pytest.raises(ConfigError) as err:
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    return str(err.value)


def test_a_test_of_validations_images_is_refused_before_any_training(_finetune_source_once, tmp_path, monkeypatch):
    line = refused_before_training(_copy(_finetune_source_once, tmp_path, _validation_as_test), monkeypatch)
    assert "8 of the 8 rows of 'test'" in line and "'validation', the rows the choice was made on" in line, line
    assert "--split test --overwrite" in line and "\n" not in line, line


def test_a_few_of_validations_images_in_test_are_noted_and_test_is_not_called_the_judge(
    _finetune_source_once, tmp_path
):
    ft = _copy(_finetune_source_once, tmp_path, _one_of_validation)
    run = finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    said = [n for n in run["notes"] if "1 of the 8 rows of 'test'" in n and "'validation'" in n]
    assert said and "optimistic by at most 1 row" in said[0], run["notes"]
    assert not _judged_by_test(run["notes"]), run["notes"]


def test_an_honest_test_is_still_judged_by(finetune_source_32):
    ft = finetune_source_32
    run = finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    assert _judged_by_test(run["notes"]) and not any("rows of 'test'" in n for n in run["notes"]), run["notes"]


def test_test_not_compared_over_the_caps_is_said_not_judged_by(_finetune_source_once, tmp_path, monkeypatch):
    ft = _copy(_finetune_source_once, tmp_path)
    monkeypatch.setattr(fittedrows, "MAX_ROWS", 4)  # test's 8 rows: over the rows rule's caps
    run = finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    said = [n for n in run["notes"] if "the rows of 'test' were not compared with those of" in n]
    assert any("'validation', the rows the choice was made on" in n for n in said), run["notes"]
    assert any("'train'" in n for n in said), run["notes"]
    assert not _judged_by_test(run["notes"]), run["notes"]


def test_a_test_of_phase_as_training_images_in_its_own_store_is_refused(_finetune_source_once, tmp_path, monkeypatch):
    ft = _copy(_finetune_source_once, tmp_path)
    shutil.rmtree(ft["data"] / "train")
    write_images(ft["data"], "train", {"cat": 8, "dog": 8}, seed=11)  # the copy trains on other images
    shutil.rmtree(ft["data"] / "test")
    shutil.copytree(_finetune_source_once["data"] / "train", ft["data"] / "test")  # phase A's 8 + 8 training images
    for split in ("train", "test"):
        extract(ft["data"], split, ft["store"], CFG, overwrite=True)
    monkeypatch.setattr(ft_module, "train", lambda *a, **k: pytest.fail("trained before the rows rule refused"))
    with pytest.raises(ConfigError) as err:  # phase A's run records the session's store, which holds its train
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    line = str(err.value)
    assert "16 of the 16 rows of 'test'" in line and "(phase A's head)" in line, line
    assert str(_finetune_source_once["store"]) in line, line


def test_phase_as_training_rows_in_no_readable_store_are_said_not_passed(finetune_source_32, monkeypatch):
    fs = FeatureStore(finetune_source_32["store"])
    rec, _ = get_run(finetune_source_32["dense"], finetune_source_32["store"])
    gone = "its rows could not be compared: /gone/f.h5 cannot be read (no such file)"
    monkeypatch.setattr(finetune_rows, "training_store", lambda *a: (None, gone))
    notes = finetune_rows.rows_of_test(fs, rec["extractor"], rec, ["validation", "test"], False)
    assert any("/gone/f.h5 cannot be read" in n and "phase A's head" in n for n in notes), notes
    assert finetune_rows.rows_of_test(fs, rec["extractor"], rec, ["validation"], False) is None  # no test scored


def test_no_test_split_scored_is_not_judged_by():
    built = SimpleNamespace(model=SimpleNamespace(layers=[]))
    trained = SimpleNamespace(restored_epoch=2, baseline={"val_loss": 0.5})
    notes = ft_module._notes(built, FinetuneConfig("block5_conv1"), trained, None, None)
    assert not _judged_by_test(notes) and any("no test split was scored" in n for n in notes), notes
    assert _judged_by_test(ft_module._notes(built, FinetuneConfig("block5_conv1"), trained, None, []))

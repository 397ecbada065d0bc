"""Attack 79, the lead's fixes: a fit with one setting still chooses on validation (its calibration temperature, a
dense head's epoch), so a test split of validation's rows is noted (#1); fine-tuning reads the user's own extraction
of its cut as it is, never calls it a cache to delete (#3); every printed delete command is one shell word (#4)."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from featstore import fit
from featstore.store.writer import write_arrays


def test_a_fit_with_one_setting_notes_a_test_of_validations_rows(tmp_path):
    rng = np.random.default_rng(0)

    def part(n):
        y = np.arange(n) % 2
        return (rng.normal(size=(n, 16)) + 0.4 * y[:, None]).astype(np.float32), y

    store, (Xt, yt), (Xv, yv) = tmp_path / "s.h5", part(200), part(60)
    for name, (X, y) in {"train": (Xt, yt), "validation": (Xv, yv), "test": (Xv, yv)}.items():
        write_arrays(store, "synthetic", name, X, y, ["a", "b"])
    rec = fit(store, "logreg", runs=tmp_path / "runs")  # one setting: its temperature is still chosen on validation
    said = [n for n in rec["notes"] if "60 of the 60 rows of 'test' are rows of 'validation'" in n]
    assert said and "the choice's own maximum" in said[0], rec["notes"]


def test_finetune_reads_the_users_own_extraction_of_its_cut_and_keeps_it(finetune_source_32):
    from featstore import ExtractorConfig, FeatureStore, extract
    from featstore.experiments.finetune import FinetuneConfig, finetune

    ft = finetune_source_32
    mine = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7, layers=("block4_pool", "block5_pool"))
    for split in ("train", "validation", "test"):
        extract(ft["data"], split, ft["store"], mine)  # the user's vgg16@block4_pool: the cut's very name
    run = finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    note = next(n for n in run["notes"] if "vgg16@block4_pool" in n)
    assert "not a fine-tuning cache" in note and "del h5py" not in note, note  # was: "To remove it: ... del"
    assert "vgg16@block4_pool" in FeatureStore(ft["store"]).extractors(caches=False)  # never marked a cache


def test_the_cache_note_gives_one_shell_word_to_delete_it(tmp_path):
    from featstore.experiments.finetune_cache import Cached, cache_note

    class Fs:
        path = Path("/data/it's $HOME `touch x`/s.h5")

        def splits(self, group):
            return []

    note = cache_note(Fs(), Cached("vgg16@block4_pool", {}), "block5_conv1", (0, 0))
    command = note.split("To remove it: ", 1)[1].split(", then h5repack", 1)[0]
    code = f"import h5py; del h5py.File({str(Fs.path)!r}, 'a')['vgg16@block4_pool']"
    assert shlex.split(command) == ["python", "-c", code], command  # was a double-quoted word: $ and ` ran (79 #4)


def test_a_refusal_of_the_users_own_group_never_advises_deleting_it(_finetune_source_once, tmp_path):
    import shutil

    import pytest

    from featstore import ExtractorConfig, FeatureStore, extract
    from featstore.errors import StoreError
    from featstore.experiments.finetune import FinetuneConfig, finetune

    src = _finetune_source_once
    shutil.copytree(src["root"], tmp_path / "c", symlinks=True)
    ft = {**src, "store": tmp_path / "c" / src["store"].relative_to(src["root"])}
    mine = ExtractorConfig(
        model="vgg16", image_size=32, weights="none", seed=7, layers=("block4_pool", "block5_pool"), pooling="avg"
    )
    for split in ("train", "validation"):
        extract(ft["data"], split, ft["store"], mine)  # the cut's name, another pooling: not the cache's features
    with pytest.raises(StoreError) as err:
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    line = str(err.value)
    assert "vgg16@block4_pool" in line and "pass --no-cache" in line and "delete it" not in line, line
    assert "vgg16@block4_pool" in FeatureStore(ft["store"]).extractors(caches=False)

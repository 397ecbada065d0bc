"""Attack 40 #11: `featstore finetune` on a disk that fills up. The whole training ran, then "the disk is full ... pass
--runs DIR on another disk. Nothing was recorded": the training was thrown away and the fix could not work (--runs is
also where finetune reads its phase-A run). Now the room the run (and the cached cut) needs is checked before any
epoch, and a run the runs folder refuses after training is kept whole in a private temporary folder, named in the line
with how long it trained and how to record it."""

import errno
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest

from featstore import FeatureStore, list_runs
from featstore.errors import OutputError
from featstore.experiments import finetune as finetune_module
from featstore.experiments import finetune_space
from featstore.experiments.finetune import FinetuneConfig, finetune
from featstore.runs import write
from featstore.runs.folder import get_run

SIZE = 32
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def ft(finetune_source_32):
    """Two classes, 8/4/4 images each, VGG16@32 with seeded random weights; a dense run (phase A)."""
    made = finetune_source_32  # this module's copy of the session's finetune_source(root, SIZE)
    return {**made, "runs": made["store"].with_suffix(".runs")}


def _ids(ft) -> set[str]:
    return {r["id"] for r in list_runs(ft["store"])}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_full_runs_disk_is_refused_before_any_epoch_with_the_bytes_and_a_fix_that_works(ft, monkeypatch):
    real = shutil.disk_usage

    def full(path):  # the runs folder's disk has 1 MB left; the store's (another disk here: same) too
        return Usage(10**9, 10**9 - 10**6, 10**6) if Path(path) == ft["runs"] else real(path)

    monkeypatch.setattr(finetune_space.shutil, "disk_usage", full)

    def never(*args, **kwargs):
        raise AssertionError("trained although the run could not be recorded")

    monkeypatch.setattr(finetune_module, "train", never)
    before = _ids(ft)
    with pytest.raises(OutputError) as exc:
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4, cache=False), store=ft["store"])
    line = str(exc.value)
    assert "\n" not in line and "nothing was trained" in line and str(ft["runs"]) in line
    assert "1 MB" in line and "the run folder (about" in line  # what is free and what the run needs
    _, phase_a = get_run(ft["dense"], ft["store"])
    assert f"cp -r {phase_a} DIR/" in line  # --runs works only with the phase-A run copied there
    assert _ids(ft) == before


def test_the_up_front_estimate_covers_what_finetune_writes(ft, monkeypatch):
    """The estimate is not below the run folder finetune writes nor below the cut it caches (and not absurdly above)."""
    seen = {}
    real_room = finetune_space.ensure_room

    def spy(root, run, store, cut, phase_a):
        seen.update(run=run, cut=cut)
        return real_room(root, run, store, cut, phase_a)

    monkeypatch.setattr(finetune_module, "ensure_room", spy)
    fs = FeatureStore(ft["store"])
    assert "vgg16@block4_pool" not in fs.extractors()
    rec = finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4), store=ft["store"])
    _, folder = get_run(rec["id"], ft["store"])
    written = _folder_bytes(folder)
    assert written <= seen["run"] <= 3 * written + (1 << 20), (written, seen)
    fs = FeatureStore(ft["store"])
    cut = sum(fs.nbytes(s, "vgg16@block4_pool") for s in ("train", "validation"))
    assert cut <= seen["cut"] <= 2 * cut, (cut, seen)
    shutil.rmtree(folder)


def _full_when_recorded(monkeypatch, runs: Path):
    """The runs folder's disk fills while the fine-tuning trains: saving the model there fails with ENOSPC."""
    real = write.save_estimator

    def save(est, folder):
        if Path(os.path.realpath(folder)).parent == runs:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.keras"))
        return real(est, folder)

    monkeypatch.setattr(write, "save_estimator", save)


def test_a_disk_full_after_training_keeps_the_run_whole_and_says_how_to_record_it(ft, tmp_path, monkeypatch):
    _full_when_recorded(monkeypatch, ft["runs"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _ids(ft)
    with pytest.raises(OutputError) as exc:
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=2, batch_size=4, cache=False), store=ft["store"])
    line = str(exc.value)
    assert "\n" not in line and line.startswith("fine-tuned for ") and "(2 epochs)" in line, line
    assert "the disk is full" in line and "--runs DIR on another disk" not in line
    (kept,) = list(tmp_path.glob("featstore-finetune-*"))
    (run,) = [p for p in kept.iterdir() if p.name.startswith("finetune-")]
    assert f"kept whole in {run}" in line and f"`mv {run} {ft['runs']}/`" in line
    assert stat_mode(kept) == 0o700  # the user's alone
    assert _ids(ft) == before and not [p for p in ft["runs"].iterdir() if p.name.startswith(".finetune")]
    rec, _ = get_run(run.name, ft["store"], kept)  # readable where it is kept ...
    assert rec["from_run"] == ft["dense"] and rec["metrics"]["test"]["n"] == 8
    monkeypatch.undo()
    shutil.move(str(run), str(ft["runs"]))  # ... and recorded by the line's command once there is room
    assert _ids(ft) == before | {run.name}
    rec, folder = get_run(run.name, ft["store"])
    shutil.rmtree(folder)


def test_a_run_that_can_be_kept_nowhere_says_so_and_what_to_do(ft, tmp_path, monkeypatch):
    _full_when_recorded(monkeypatch, ft["runs"])
    real = write.save_estimator

    def nowhere(est, folder):
        if Path(os.path.realpath(folder)).parent.parent == tmp_path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.keras"))
        return real(est, folder)

    monkeypatch.setattr(write, "save_estimator", nowhere)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(OutputError, match=r"^fine-tuned for .* nor keep it in .*nothing was recorded.*TMPDIR"):
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4, cache=False), store=ft["store"])
    assert not list(tmp_path.glob("featstore-finetune-*"))  # the private folder that could not hold it is removed


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777

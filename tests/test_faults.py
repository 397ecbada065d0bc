"""Crash safety: SIGKILLed extractions resume bit-identically; full and read-only filesystems; foreign links; check."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import ExtractorConfig, FeatureStore, StoreError, extract
from featstore.store import writer
from featstore.store.check import check_store

from .conftest import write_images

CFG = dict(model="vgg16", image_size=32, weights="none", seed=5)
WRITER = (
    "import sys; from featstore import extract, ExtractorConfig; "
    "extract(sys.argv[1], 'train', sys.argv[2], ExtractorConfig(**eval(sys.argv[3])), batch_size=2, compression=sys.argv[4])"
)


def _committed(path: Path) -> int:
    try:
        return int(FeatureStore(path).split_info("train")["committed_rows"])
    except StoreError:
        return -1


def _same(a: Path, b: Path) -> bool:
    x, y = FeatureStore(a), FeatureStore(b)
    xa, ya = x.load("train")
    xb, yb = y.load("train")
    return (
        np.array_equal(xa, xb)
        and np.array_equal(ya, yb)
        and x.paths("train") == y.paths("train")
        and x.failures("train") == y.failures("train")
        and xa.tobytes() == xb.tobytes()
    )


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, capsys, compression):
    data = tmp_path / "data"
    write_images(data, "train", {"a": 30, "b": 30, "c": 30}, seed=11)
    (data / "train" / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")  # a failure record must survive too
    clean = tmp_path / "clean.h5"
    extract(data, "train", clean, ExtractorConfig(**CFG), batch_size=2, compression=compression)
    path = tmp_path / "killed.h5"
    rng = np.random.default_rng(2026)
    kills = resumes = 0
    last = -1
    for attempt in range(40):
        log = tmp_path / f"run{attempt}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(data), str(path), repr(CFG), compression], stderr=err
            )
        resumes += attempt > 0
        if kills < 10:
            start = _committed(path)
            while proc.poll() is None and _committed(path) <= max(start, 0):
                time.sleep(0.01)  # wait until this run has committed something new, so every kill lands mid-extraction
            time.sleep(float(rng.uniform(0.0, 0.08)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                problems = check_store(path)
                assert all("uncommitted rows" in p for p in problems), problems  # openable, at most an uncommitted tail
                assert _committed(path) >= last, "committed rows went backwards"
                last = _committed(path)
                continue
        assert proc.wait(timeout=300) == 0, log.read_text()
        if kills >= 10:
            break
        path.unlink()  # finished before it could be killed: start again so the test really kills 10 times
        last = -1
    n = FeatureStore(clean).split_info("train")["committed_rows"]
    got = FeatureStore(path).paths("train")
    lost, duplicated = len(set(FeatureStore(clean).paths("train")) - set(got)), len(got) - len(set(got))
    identical = _same(clean, path)
    with capsys.disabled():
        print(
            f"\nfault test ({compression}): kills performed {kills}, resumes succeeded {resumes}, stores bit-identical {100 if identical else 0}%, "
            f"rows lost {lost}, rows duplicated {duplicated} (of {n})"
        )
    assert kills >= 10 and identical and lost == 0 and duplicated == 0
    assert check_store(path) == []


@pytest.fixture
def small_fs(tmp_path):
    """A 6 MiB tmpfs; skipped where mounting is not permitted (not root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    st = os.statvfs(folder)
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_full_filesystem_before_and_during_a_run(small_fs, data_root, tiny_config, tmp_path, monkeypatch):
    path = small_fs / "f.h5"
    extract(data_root, "validation", path, tiny_config)
    filler = _fill(small_fs, 200_000)
    with pytest.raises(StoreError, match="not enough disk space .* are free"):
        extract(data_root, "train", path, tiny_config, batch_size=4)
    assert check_store(path) == [] and FeatureStore(path).load("validation")[0].shape[0] == 6
    filler.unlink()
    # now the disk fills up after the first committed batch
    real_commit = writer.SplitWriter.commit
    state = {"calls": 0}

    def commit_then_fill(self, *args, **kwargs):
        state["calls"] += 1
        real_commit(self, *args, **kwargs)
        if state["calls"] == 1:
            _fill(small_fs, 100_000)

    monkeypatch.setattr(writer.SplitWriter, "commit", commit_then_fill)
    with pytest.raises(StoreError, match="the 4 rows already committed are kept and it resumes"):
        extract(data_root, "train", path, tiny_config, batch_size=4)
    monkeypatch.setattr(writer.SplitWriter, "commit", real_commit)
    assert FeatureStore(path).split_info("train")["committed_rows"] == 4
    assert check_store(path) == []
    (small_fs / "filler.bin").unlink()
    r = extract(data_root, "train", path, tiny_config, batch_size=4)
    assert r.resumed_from == 4 and r.rows == 12
    clean = tmp_path / "clean.h5"
    extract(data_root, "train", clean, tiny_config, batch_size=4)
    np.testing.assert_array_equal(FeatureStore(clean).load("train")[0], FeatureStore(path).load("train")[0])


def test_read_only_filesystem(tmp_path, data_root, tiny_config):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(StoreError, match="is read-only"):
            extract(data_root, "train", mnt / "f.h5", tiny_config)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_links_pointing_outside_are_refused(tmp_path, data_root, tiny_config):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    with h5py.File(tmp_path / "other.h5", "w") as o:
        o["secret"] = np.arange(3)
    with h5py.File(path, "a") as f:
        f["vgg16"]["sneaky"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/secret")
    with pytest.raises(StoreError, match=r"point outside it: /vgg16/sneaky \(ExternalLink\)"):
        FeatureStore(path)
    with pytest.raises(StoreError, match="point outside it"):
        extract(data_root, "validation", path, tiny_config)
    assert any("points outside the store" in p for p in check_store(path))
    assert FeatureStore(path, allow_external=True).load("train")[0].shape[0] == 12


def test_check_reports_each_problem(tmp_path, data_root, tiny_config):
    from typer.testing import CliRunner

    from featstore.cli import app

    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    extract(data_root, "validation", path, tiny_config)
    assert CliRunner().invoke(app, ["check", str(path)]).exit_code == 0
    with h5py.File(path, "a") as f:
        sg = f["vgg16/train"]
        sg["features"][3] = np.nan
        sg["paths"][5] = sg["paths"][4]
        f["vgg16/validation"].attrs["class_names"] = np.array(["cat", "cow"], dtype=h5py.string_dtype())
        sg["features"].resize(14, axis=0)
        sg["labels"].resize(14, axis=0)
        sg["paths"].resize(14, axis=0)
    problems = check_store(path)
    text = "\n".join(problems)
    assert "2 uncommitted rows" in text and "1 rows contain NaN" in text and "1 duplicated paths" in text
    assert "class_names ['cat', 'cow'] differ" in text
    r = CliRunner().invoke(app, ["check", str(path)])
    assert r.exit_code == 1 and "problem(s)" in r.output


def test_split_left_half_created_by_a_kill_is_started_again(tmp_path, data_root, tiny_config):
    path = tmp_path / "f.h5"
    extract(data_root, "validation", path, tiny_config)
    with h5py.File(path, "a") as f:  # what a kill inside prepare_split leaves: a group without its commit record
        f["vgg16"].create_group("train").create_dataset("features", shape=(0, 1, 1, 512), maxshape=(None, 1, 1, 512))
    r = extract(data_root, "train", path, tiny_config)
    assert r.rows == 12 and check_store(path) == []


AUG_WRITER = (
    "import sys, time; from featstore import extract, ExtractorConfig; import featstore.store.writer as w; "
    "commit = w.SplitWriter.commit; w.SplitWriter.commit = lambda *a, **k: (time.sleep(0.2), commit(*a, **k))[1]; "  # every run outlasts a kill
    "extract(sys.argv[1], 'train', sys.argv[2], ExtractorConfig(**eval(sys.argv[3])), batch_size=2, augment=2)"
)


def _copies_committed(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["vgg16/train/augmented"].attrs["commit"][0])
    except (OSError, KeyError):
        return -1


@pytest.mark.slow
def test_sigkill_while_making_augmented_copies_then_resume_is_bit_identical(tmp_path):
    """Kills mid-copies (after a new commit), and early ones (model start, compaction on resume, split done, copies not started)."""
    data = tmp_path / "data"
    write_images(data, "train", {"a": 8, "b": 8, "c": 8}, seed=11)
    (data / "train" / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")  # recorded once, in the split's failed
    cfg = dict(CFG, pooling="avg", layer="block1_pool")
    clean, path = tmp_path / "clean.h5", tmp_path / "killed.h5"
    extract(data, "train", clean, ExtractorConfig(**cfg), batch_size=2, augment=2)
    rng = np.random.default_rng(7)
    kills, last = 0, -1
    for attempt in range(30):
        log = tmp_path / f"run{attempt}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", AUG_WRITER, str(data), str(path), repr(cfg)], stderr=err)
        if kills < 6:
            if kills % 2:
                start = _copies_committed(path)
                while proc.poll() is None and _copies_committed(path) <= max(start, 0):
                    time.sleep(0.005)
                time.sleep(float(rng.uniform(0.0, 0.08)))
            else:  # early: model start-up, compaction on resume, or the split's last batches; never the whole run (48 commits of 0.2 s)
                time.sleep(float(rng.uniform(0.5, 3.0)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                if path.exists():
                    problems = check_store(path)
                    assert all("uncommitted rows" in p for p in problems), problems
                assert _copies_committed(path) >= last, "committed copy rows went backwards"
                last = _copies_committed(path)
                continue
        assert proc.wait(timeout=300) == 0, log.read_text()
        if kills >= 6:
            break
    a, b = FeatureStore(clean), FeatureStore(path)
    for aug in (False, True):
        (xa, ya), (xb, yb) = a.load("train", augmented=aug), b.load("train", augmented=aug)
        assert (
            xa.tobytes() == xb.tobytes()
            and np.array_equal(ya, yb)
            and a.paths("train", augmented=aug) == b.paths("train", augmented=aug)
        )
    assert a.failures("train") == b.failures("train") and np.array_equal(a.copies("train"), b.copies("train"))
    assert kills >= 6 and check_store(path) == []

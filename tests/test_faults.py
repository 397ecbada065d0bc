"""Crash safety: SIGKILLed extractions resume bit-identically; full and read-only filesystems; foreign links; check."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import ExtractorConfig, FeatstoreError, FeatureStore, StoreError, extract
from featstore.store import writer
from featstore.store.check import check_store
from featstore.store.locking import StoreFile
from featstore.store.resume import resume_advice

from .conftest import write_images
from .kill_writer import NAMES as SYNTHETIC_NAMES
from .kill_writer import main as write_synthetic

CFG = dict(model="vgg16", image_size=32, weights="none", seed=5)
ONE_AT_A_TIME = 300_000  # bytes: VGG16's largest tensor at 32 px is 262,144 B an image, so a batch of 2 makes two calls
WRITER = (
    f"import featstore.models.activations as A; A.MAX_ACTIVATION_BYTES = {ONE_AT_A_TIME}; "
    "import sys; from featstore import extract, ExtractorConfig; "
    "extract(sys.argv[1], 'train', sys.argv[2], ExtractorConfig(**eval(sys.argv[3])), batch_size=2, compression='gzip', "
    "augment=1)"
)
SYNTHETIC = Path(__file__).with_name("kill_writer.py")  # the store's write path and loop without TensorFlow


def _commits(path: Path) -> dict[str, int]:
    """Committed rows of every split key of every group (``{}`` while there is no store, or the writer holds it)."""
    try:
        with StoreFile(path).open("r", timeout=0) as f:  # never wait for the writer: a busy store is no news
            return {
                f"{name}/{key}": int(f[name][key].attrs["commit"][0])
                for name in f
                for key in ("train", "train/augmented")
                if key in f[name] and "commit" in f[name][key].attrs
            }
    except (OSError, FeatstoreError):
        return {}


def _after_kill(path: Path, last: dict[str, int]) -> dict[str, int]:
    """The checks after every kill: the store opens with at most an uncommitted tail and splits to resume (check lists
    them: attack 64 #8), no committed count went down."""
    if path.exists():
        problems = check_store(path)
        assert all("uncommitted rows" in p or "not complete" in p for p in problems), problems  # copies too (73 #2)
    now = _commits(path)
    assert all(now.get(k, -1) >= n for k, n in last.items()), f"committed rows went backwards: {last} -> {now}"
    return now


def _kill_loop(cmd: list[str], path: Path, tmp_path: Path, kills: int, wait) -> tuple[int, int]:
    """Start ``cmd`` again and again, SIGKILL it ``kills`` times when ``wait(proc, k)`` returns, then let one run finish;
    (kills, resumes). After every kill the store opens with at most an uncommitted tail and no committed count went
    down. A run that finishes before it could be killed starts the store again, so the loop really kills ``kills`` times.
    """
    done = resumes = 0
    last: dict[str, int] = {}
    for attempt in range(4 * kills):
        log = tmp_path / f"run{attempt}.log"
        resumes += path.exists()
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        if done < kills:
            wait(proc, done)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                done += 1
                last = _after_kill(path, last)
                continue
        proc.communicate(timeout=300)
        assert proc.returncode == 0, log.read_text()
        if done >= kills:
            return done, resumes
        path.unlink()  # finished before it could be killed
        last, resumes = {}, 0
    raise AssertionError(f"only {done} of {kills} kills landed in {4 * kills} runs")


class _InBatches:
    """When to kill the synthetic writer, from the lines it prints ("start" after its imports, "batch" before each
    batch's commit): 0-50 ms after the ``batches`` (low, high)-th batch of the run (low >= 2: after at least one new
    commit). A commit takes a few ms, so a kill lands inside one or some batches later; landing a few batches later
    matters: with 0-15 ms, the gzip variants missed the EOA failure of a writer without compaction and with rewritten
    chunks. Every third kill is early instead, at a random moment between "start" and the first batch as long as the
    last run took for them (listing, survey, the compaction a resume starts with, prepare, the first decodes)."""

    def __init__(self, seed: int, batches: tuple[int, int] = (2, 5)):
        self.rng, self.gap, self.batches = np.random.default_rng(seed), 0.1, batches

    def __call__(self, proc: subprocess.Popen, k: int) -> None:
        if proc.stdout.readline() != "start\n":
            return  # ended
        started = time.monotonic()
        if k % 3 == 2:
            time.sleep(float(self.rng.uniform(0.0, self.gap)))
            return
        for i in range(int(self.rng.integers(self.batches[0], self.batches[1] + 1))):
            if not proc.stdout.readline():
                return  # finished
            if i == 0:
                self.gap = time.monotonic() - started
        time.sleep(float(self.rng.uniform(0.0, 0.05)))


def _after_commit(path: Path, keys: list[str], seed: int):
    """When to kill an extraction: kill k 0-80 ms after the run committed something new to ``keys[k]`` (polled)."""
    rng = np.random.default_rng(seed)

    def wait(proc: subprocess.Popen, k: int) -> None:
        start = _commits(path).get(keys[k], 0)
        while proc.poll() is None and _commits(path).get(keys[k], 0) <= start:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.08)))

    return wait


def _compare(clean: Path, path: Path, names: list[str], copies: bool) -> tuple[int, int, bool]:
    """(rows lost, rows duplicated, bit-identical) of the killed store against the clean one, every group and key.

    A row is its stored path (and, for the copies, its copy index): lost when the clean store has it and the killed one
    does not, duplicated when the killed one holds it more than once.
    """
    a, b = FeatureStore(clean), FeatureStore(path)
    identical, lost, duplicated = True, 0, 0
    for name in names:
        for aug in (False, True) if copies else (False,):
            (xa, ya), (xb, yb) = a.load("train", name, augmented=aug), b.load("train", name, augmented=aug)
            pa, pb = a.paths("train", name, augmented=aug), b.paths("train", name, augmented=aug)
            if aug:
                pa = list(zip(a.copies("train", name).tolist(), pa))
                pb = list(zip(b.copies("train", name).tolist(), pb))
            lost += len(set(pa) - set(pb))
            duplicated += len(pb) - len(set(pb))
            identical &= xa.dtype == xb.dtype and xa.tobytes() == xb.tobytes() and np.array_equal(ya, yb) and pa == pb
        identical &= a.failures("train", name) == b.failures("train", name)
    return lost, duplicated, bool(identical)


@pytest.mark.parametrize(
    ("compression", "copies"),
    [("none", 0), ("gzip", 0), ("none", 2), ("gzip", 2)],
    ids=["none", "gzip", "copies", "copies-gzip"],
)
def test_sigkill_synthetic_writer_at_random_points_then_resume_is_bit_identical(tmp_path, capsys, compression, copies):
    """10 kills of the store's real write path (survey, compaction on resume, prepare, the one loop on the local engine,
    a commit per batch, finish) on synthetic features of two groups, without TensorFlow; every third kill early."""
    data = tmp_path / "data"
    write_images(data, "train", {"a": 40, "b": 40, "c": 40}, seed=11, size=16)
    (data / "train" / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")  # a failure record must survive too
    clean, path = tmp_path / "clean.h5", tmp_path / "killed.h5"
    write_synthetic(str(data), str(clean), compression, copies)
    cmd = [sys.executable, str(SYNTHETIC), str(data), str(path), compression, str(copies)]
    # 61 commits of the split (+ 120 of the copies): kills spread over the split, or over both passes
    kills, resumes = _kill_loop(cmd, path, tmp_path, 10, _InBatches(2026, (2, 28) if copies else (2, 5)))
    lost, duplicated, identical = _compare(clean, path, SYNTHETIC_NAMES, copies > 0)
    with capsys.disabled():
        print(
            f"\nfault test (synthetic, {compression}, copies {copies}): kills performed {kills}, resumes succeeded "
            f"{resumes}, stores bit-identical {100 if identical else 0}%, rows lost {lost}, rows duplicated {duplicated} "
            f"(of {FeatureStore(clean).split_info('train', SYNTHETIC_NAMES[0])['committed_rows']})"
        )
    assert kills == 10 and identical and lost == 0 and duplicated == 0
    assert check_store(path) == []


@pytest.mark.slow
def test_sigkill_extract_then_resume_is_bit_identical(tmp_path, capsys, monkeypatch, caplog):
    """The whole path once, with TensorFlow: `extract` (gzip, one augmented copy) SIGKILLed twice in the split and once
    in the copies, each after a new commit, resumed each time to a store bit-identical to a clean one. Both runs hold
    the activation bound so low that each batch goes through the model one image a call (forward.in_parts): the
    calls a resumed batch makes are the clean run's."""
    monkeypatch.setattr("featstore.models.activations.MAX_ACTIVATION_BYTES", ONE_AT_A_TIME)
    data = tmp_path / "data"
    write_images(data, "train", {"a": 10, "b": 10, "c": 10}, seed=11)
    (data / "train" / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    clean, path = tmp_path / "clean.h5", tmp_path / "killed.h5"
    with caplog.at_level(logging.INFO, logger="featstore"):
        extract(data, "train", clean, ExtractorConfig(**CFG), batch_size=2, compression="gzip", augment=1)
    assert "batches go through it 1 image(s) at a time" in caplog.text
    cmd = [sys.executable, "-c", WRITER, str(data), str(path), repr(CFG)]
    keys = ["vgg16/train", "vgg16/train", "vgg16/train/augmented"]
    kills, resumes = _kill_loop(cmd, path, tmp_path, 3, _after_commit(path, keys, seed=2026))
    lost, duplicated, identical = _compare(clean, path, ["vgg16"], copies=True)
    with capsys.disabled():
        print(
            f"\nfault test (extract, gzip, copies 1): kills performed {kills}, resumes succeeded {resumes}, stores "
            f"bit-identical {100 if identical else 0}%, rows lost {lost}, rows duplicated {duplicated}"
        )
    assert kills == 3 and identical and lost == 0 and duplicated == 0
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
    assert check_store(path) == [  # sound, to resume (attack 64 #8)
        f"/vgg16/train: split train is not complete (4 of 12 images); {resume_advice('train')}"
    ]
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
        with pytest.raises(StoreError, match="is on a file system mounted read-only.*Use a --store path on a writable"):
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

"""Attack 33 #4: a --model / --weights file is read several times (bounds, Keras, h5py, its sha256); each reading is of
the one file held since the first check, so a FIFO renamed onto the name is refused in one line (not waited on for
ever) and a file swapped in after the bounds were checked is never loaded."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featstore import WeightsError, get_backbone
from featstore.models import saved
from featstore.models.scratch import user_scratch
from featstore.models.weights import load_base, sha256_file, weights_digest


def _fifo_onto(path: Path) -> None:
    """What a colleague who can rename entries in the file's folder does: a FIFO renamed onto its name."""
    os.mkfifo(f"{path}.fifo")
    os.replace(f"{path}.fifo", path)


CHILD = """
import os, sys
from pathlib import Path
from featstore import ConfigError, WeightsError, get_backbone
from featstore.models import hub, saved, weights

def fifo_after_look(module):
    real = module.what_is_at
    def wrapped(path, *a, **k):
        found = real(path, *a, **k)
        if found is None:  # a colleague renames a FIFO onto the name right after featstore looked
            os.mkfifo(f"{path}.fifo")
            os.replace(f"{path}.fifo", path)
        return found
    module.what_is_at = wrapped

kind, path = sys.argv[1], Path(sys.argv[2])
fifo_after_look({"weights": weights, "model": saved, "preset": hub}[kind])
try:
    if kind == "weights":
        weights.load_base(get_backbone("vgg16"), 32, str(path))
    elif kind == "model":
        saved.SavedModelSpec.from_path(path)
    else:
        hub.HubSpec.from_model(str(path.parent))
except (ConfigError, WeightsError) as exc:
    print("REFUSED:", exc)
"""


def _load_with_a_fifo_renamed_on(kind: str, path: Path) -> str:
    """What loading ``path`` (``kind``: weights or model) prints, in a child process, when a FIFO is renamed onto its
    name right after featstore's look (h5py holds the GIL while HDF5's open waits: a thread would hang the test)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading the {kind} file still waited on the FIFO at {path} after 180 s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _held_copies() -> set[str]:
    """The held-input scratch folders of this process's scratch base (other tests of the worker may have left theirs:
    the base follows ``tempfile.tempdir``, which featstore makes a folder only the user may enter)."""
    base = user_scratch()
    return set() if base is None else {p for p in os.listdir(base) if p.startswith("input-")}


def _no_scratch_left(before: set[str]) -> None:
    assert not _held_copies() - before


def test_weights_or_model_file_made_a_fifo_after_the_look_is_refused_in_one_line(vgg16_weights_file, tmp_path):
    from tests.test_own_models import _small_cnn

    path = Path(shutil.copy(vgg16_weights_file, tmp_path / "w.weights.h5"))
    said = _load_with_a_fifo_renamed_on("weights", path)
    assert said.startswith(f"REFUSED: weights file {path} is now a FIFO (named pipe), not the regular file"), said
    path = tmp_path / "cnn.keras"
    _small_cnn().save(path)
    said = _load_with_a_fifo_renamed_on("model", path)
    assert said.startswith(f"REFUSED: model file {path} is now a FIFO (named pipe)") and "Run again" in said, said


def test_preset_weights_made_a_fifo_after_the_look_are_refused_in_one_line(tmp_path):
    from tests.test_hub import save_presets

    folder = save_presets(tmp_path, ("vit",))["vit"][0]
    path = folder / "model.weights.h5"
    said = _load_with_a_fifo_renamed_on("preset", path)
    assert said.startswith(f"REFUSED: preset weights file {path} is now a FIFO (named pipe)"), said


def test_a_model_swapped_in_after_its_bounds_were_checked_is_never_loaded(tmp_path, monkeypatch):
    """The zip bounds, Keras's load and the recorded digest are all of the file first held: a file renamed onto the
    name after the checks (a colleague's, or a zip bomb) is not what is loaded or recorded."""
    from featstore import safezip
    from tests.test_own_models import _small_cnn

    before = _held_copies()
    path, other = tmp_path / "cnn.keras", tmp_path / "other.keras"
    _small_cnn().save(path)
    _small_cnn(seed=1, channels=3).save(other)
    first, real = sha256_file(path), safezip.check_zip

    def checked_then_swapped(name, *a, **k):
        real(name, *a, **k)
        if Path(path).exists() and sha256_file(path) == first:
            os.replace(other, path)

    monkeypatch.setattr(safezip, "check_zip", checked_then_swapped)
    spec = saved.SavedModelSpec.from_path(path)
    assert sha256_file(path) != first  # the swap happened
    assert (spec.sha256, spec.channels_in) == (first, 1)  # but the held file was loaded and hashed
    _no_scratch_left(before)


def test_weights_swapped_in_after_their_check_are_never_loaded(vgg16_weights_file, tmp_path, monkeypatch):
    import keras

    from featstore.models import preset_json

    path, other = Path(shutil.copy(vgg16_weights_file, tmp_path / "w.weights.h5")), tmp_path / "o.weights.h5"
    keras.utils.set_random_seed(7)
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    first, real = sha256_file(path), preset_json.check_weights_file
    expected = weights_digest(load_base(get_backbone("vgg16"), 32, str(path))[0])

    def checked_then_swapped(name):
        problem = real(name)
        os.replace(other, path)
        return problem

    monkeypatch.setattr(preset_json, "check_weights_file", checked_then_swapped)
    try:  # HDF5 opens the held file by its link's target: gone after the swap, so it may refuse
        base, info = load_base(get_backbone("vgg16"), 32, str(path))
    except WeightsError as exc:
        assert str(exc).startswith(f"weights file {path} was replaced while featstore read it"), exc
    else:
        assert (weights_digest(base), info.file_sha256, info.path) == (expected, first, str(path))
    assert sha256_file(path) != first  # the swap happened


def test_errors_while_held_name_the_users_file_not_the_private_link(tmp_path):
    """Checks and Keras read the held file through a private link: what they say about it names the user's path."""
    import h5py

    path = tmp_path / "crafted.weights.h5"
    with h5py.File(path, "w") as f:  # an array stored in another file: refused by the weights check, by its name
        f.create_dataset("w", shape=(10,), dtype="f4", external=[(str(tmp_path / "elsewhere.bin"), 0, 40)])
    with pytest.raises(WeightsError, match="stored outside the file") as err:
        load_base(get_backbone("vgg16"), 32, str(path))
    assert str(err.value).startswith(f"weights file {path}: its array 'w'")
    assert str(user_scratch()) not in str(err.value) and "/proc/self/fd" not in str(err.value)

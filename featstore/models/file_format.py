"""The name under which Keras is given a model or weights file: Keras picks the format by the name's ending alone.

``keras.saving.load_model`` reads ``*.keras`` as a Keras 3 zip (``safe_mode``) and ``*.h5``/``*.hdf5`` as a legacy
HDF5 model (code and all: featstore asks for ``--trust-model``); ``load_weights`` reads ``*.weights.h5`` as Keras 3
weights and ``*.h5`` as legacy ones; any other name is "File format not supported". featstore hands Keras a private
link to the file it holds (:mod:`featstore.models.held_input`), named here: the file's real name when it ends so, else
the name the user gave (their own link: the Hugging Face hub cache's ``snapshots/<rev>/model.keras ->
../../blobs/<sha256>``, DVC's cache, git-annex), else what the file's first bytes say (a store records the real
path, the blob: ``predict``, Ray workers and ``--weights`` after validation reload it by that name). Whichever
decides, the same name also decides whether the file is a legacy ``.h5`` (:func:`is_legacy`), so the ``--trust-model``
gate and the loader Keras picks always agree.

>>> keras_name(Path("/hub/blobs/4f2a9c0e"), Path("/hub/snapshots/rev1/model.keras"), -1)
'model.keras'
>>> keras_name(Path("/copies/MODEL.KERAS"), None, -1)
'MODEL.keras'
>>> is_legacy(Path("m.weights.h5")), is_legacy(Path("m.keras"))
(True, False)
"""

from __future__ import annotations

import os
from pathlib import Path

ENDINGS = (".keras", ".weights.h5", ".h5", ".hdf5")  # the names Keras's loaders accept
LEGACY = (".h5", ".hdf5")  # loaded by Keras's legacy HDF5 code (for a model: not covered by safe_mode)
ZIP_MAGIC = b"PK\x03\x04"  # a .keras file is a zip
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def keras_name(path: Path, named: Path | None, fd: int) -> str:
    """The file name Keras must see for the file held at ``fd``, whose real path is ``path`` and which the user
    named ``named`` (links unresolved; None: ``path``)."""
    for candidate in (path, named):
        found = next((end for end in ENDINGS if candidate and candidate.name.lower().endswith(end)), None)
        if found:
            # in Keras's spelling: it reads endings case-sensitively, so MODEL.KERAS (a FAT/Windows copy) was "File
            # format not supported" after featstore's checks took it (attack 39 #2); is_legacy tests this name
            return candidate.name[: -len(found)] + found
    ending = _ending_of(fd)
    # the private name only has to end so (messages name the user's path): a blob's name of 245 bytes or more with
    # the ending added was over NAME_MAX, an ENAMETOOLONG traceback (attack 39 #5)
    return path.name + ending if len(os.fsencode(path.name + ending)) <= 200 else "model" + ending


def is_legacy(name: Path) -> bool:
    """Whether Keras reads the file it is given as ``name`` with its legacy HDF5 code."""
    return name.name.lower().endswith(LEGACY)


def _ending_of(fd: int) -> str:
    """The ending the content of the file at ``fd`` calls for: ``.keras`` (a zip), ``.h5`` (an HDF5 file as Keras 2 and
    Keras 3's legacy ``model.save('m.h5')`` write it: a model, or weights by layer name), ``.weights.h5`` (other HDF5:
    Keras 3's ``save_weights``), or none (Keras then says the format is not supported)."""
    try:
        head = os.pread(fd, len(HDF5_MAGIC), 0)
    except OSError:
        return ""
    if head.startswith(ZIP_MAGIC):
        return ".keras"
    if head != HDF5_MAGIC:
        return ""
    import h5py

    try:
        with os.fdopen(os.dup(fd), "rb") as fh, h5py.File(fh, "r") as f:
            legacy = "model_weights" in f or any(key in f.attrs for key in ("model_config", "layer_names"))
    except Exception:  # noqa: BLE001 - damaged HDF5: the legacy reading, which the --trust-model gate covers
        return ".h5"
    return ".h5" if legacy else ".weights.h5"

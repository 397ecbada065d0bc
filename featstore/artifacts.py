"""Saving and loading fitted classifiers without executing untrusted code.

scikit-learn pipelines are written with ``skops.io`` (no pickle); on load, every type in the file must be
one featstore itself writes (scikit-learn, numpy, featstore) and the file's sha256 must equal the one
recorded in the run. The Keras head is a ``.keras`` file loaded with ``safe_mode=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sklearn.pipeline import Pipeline

from .classifiers import FeatureReshape
from .dense import DenseHead
from .errors import StoreError
from .weights import sha256_file

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "featstore.classifiers.", "scipy.sparse.")
UNTRUSTED_PARTS = (".testing", ".f2py", ".distutils", ".lib.npyio", "load", "exec", "eval", "system")  # never in a fitted classifier


def save_estimator(est: Pipeline, folder: Path) -> dict:
    """Write ``est`` into ``folder``; returns the artifact record (file, format, sha256)."""
    head = est.steps[-1][1]
    if isinstance(head, DenseHead):
        model_file = folder / "model.keras"
        head.save(model_file)
        reshape = est.steps[0][1]
        meta = {"reduce": reshape.reduce, "n_features_in": reshape.n_features_in_, "params": head.get_params(), "classes": head.classes_.tolist(),
                "history": head.history_}
        (folder / "head.json").write_text(json.dumps(meta, indent=1))
        return {"file": model_file.name, "format": "keras", "sha256": sha256_file(model_file),
                "meta_file": "head.json", "meta_sha256": sha256_file(folder / "head.json")}
    import skops.io as sio

    path = folder / "model.skops"
    sio.dump(est, path)
    return {"file": path.name, "format": "skops", "sha256": sha256_file(path)}


def _verify(path: Path, expected: str) -> None:
    if not path.is_file():
        raise StoreError(f"run artifact {path} is missing; the run folder is incomplete — fit it again")
    got = sha256_file(path)
    if got != expected:
        raise StoreError(f"run artifact {path} has sha256 {got[:12]}, the run recorded {expected[:12]}: it was changed "
                         f"after the fit. Refusing to load it; fit the classifier again.")


def load_estimator(folder: Path, artifact: dict) -> Pipeline:
    """Load a run's fitted pipeline after checking its sha256 and (skops) that it holds only trusted types."""
    path = folder / artifact["file"]
    _verify(path, artifact["sha256"])
    if artifact["format"] == "keras":
        _verify(folder / artifact["meta_file"], artifact["meta_sha256"])
        meta = json.loads((folder / artifact["meta_file"]).read_text())
        try:
            head = DenseHead(**meta["params"]).load_model(path, meta["classes"], meta.get("history"))
        except Exception as exc:  # Keras raises ValueError/TypeError/OSError for files it cannot rebuild
            raise StoreError(f"run artifact {path} cannot be loaded by this Keras ({exc}); fit the classifier again") from exc
        reshape = FeatureReshape(meta["reduce"])
        reshape.n_features_in_ = meta["n_features_in"]  # stateless apart from the input check
        return Pipeline([("features", reshape), ("clf", head)])
    import skops.io as sio

    types = sio.get_untrusted_types(file=path)
    foreign = [t for t in types if not t.startswith(TRUSTED_PREFIXES) or any(part in t for part in UNTRUSTED_PARTS)]
    if foreign:
        raise StoreError(f"run artifact {path} contains types featstore never writes ({', '.join(foreign)}); refusing to load it")
    try:
        return sio.load(path, trusted=types)
    except Exception as exc:  # skops raises TypeError/ValueError/KeyError for files of other library versions
        raise StoreError(f"run artifact {path} cannot be loaded with these library versions ({exc}); fit the classifier again") from exc

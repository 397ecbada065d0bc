"""The run record: ``run.json`` as one typed, immutable value, validated in one place for every kind of run.

:meth:`RunRecord.from_json` is the only way a record comes to be, whether it was read from a run folder
or is about to be written into one: it checks the keys every reader relies on (and the keys its kind adds,
declared by the kind in :mod:`featstore.runs.kinds`), their types, the names in it (run ids and split names
become file names), the shapes of its metrics and the meaning the kind gives its own keys. A record that
fails is a ``BrokenRunError`` naming the key and the fix. ``run.json`` holds the same keys and values as
before records were typed, so older featstore reads new runs and new featstore reads old ones.

A record reads as attributes (``rec.kind``, ``rec.metrics["test"].accuracy``) and, as before, as a read-only
mapping of its JSON (``rec["metrics"]["test"]["accuracy"]``: each access gives a fresh copy, so changing it
changes nothing).

>>> digest_paths(["a/x.png", "b/y.png"])[:12]
'fff9205a6ea8'
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from featstore.provenance import is_plain_name

if TYPE_CHECKING:
    import numpy as np
from featstore.runs.files import RECORD, BrokenRunError, valid_name
from featstore.runs.schema import (  # noqa: F401 (check_weights, raise_bad_names: re-exported)
    _NUMBERS,
    Types,
    check_budget,
    check_calibration,
    check_fields,
    check_metrics,
    check_weights,
    raise_bad_names,
)
from featstore.version import __version__

COMMON: dict[str, Types] = {  # run.json keys every reader relies on, whatever the kind
    "id": str,
    "kind": str,
    "created_at": str,
    "extractor": str,
    "fingerprint": str,
    "class_names": list,
    "clf": str,
    "params": dict,
    "metrics": dict,
    "predictions": dict,
    "predictions_sha256": str,
}
OPTIONAL: dict[str, Types] = {  # checked when present
    "store": str,
    "given": dict,
    "selection": dict,
    "notes": list,
    "history": dict,
    "phase_a_history": dict,
    "fit_seconds": (int, float),
    "predict_seconds_per_image": (int, float),
    "streamed": bool,
    "memory_budget": (int, type(None)),
    "augmented": dict,
    "trainable_layers": list,
    "cached_cut": str,
    "weights_digest": str,
    "seconds_per_epoch": (int, float),
    "calibration": dict,
    "inputs": dict,  # a fit's request and the identity of its train and validation splits (sweep reuses the run)
}
_SPLIT_FIELDS = ("n", "accuracy", "macro_f1", "per_class", "confusion_matrix")  # SplitMetrics' own fields
VERSIONED = ("numpy", "scikit-learn", "h5py", "keras", "tensorflow", "skops")  # library versions a run records


class KindSchema(Protocol):
    """What a kind of run adds to the common record (``featstore.runs.kinds.RunKind`` is one)."""

    name: str  # the record's "kind"
    fields: Mapping[str, Types]  # keys this kind requires, with their types

    def check_record(self, obj: dict, where: str, folder: Path) -> None:
        """BrokenRunError unless the kind's own keys mean something it can use."""


@dataclass(frozen=True)
class SplitMetrics:
    """The metrics of one evaluated split."""

    n: int  # rows evaluated
    accuracy: float
    macro_f1: float
    per_class: Mapping[str, Mapping[str, float]]  # class -> precision, recall, f1, support
    confusion: Any  # as run.json keeps it: rows of counts, or a large one's non-zero cells (see confusion_matrix)
    figures: Mapping[str, Any] = field(default_factory=dict)  # what runs recorded since: intervals, log-loss, ECE, ...

    @property
    def confusion_matrix(self) -> np.ndarray:
        """The K x K counts (rows: true class, columns: predicted class), made when asked: a listing never pays for
        a 1,000-class matrix."""
        from featstore.stats.figures import dense_confusion

        cm = dense_confusion(self.confusion)
        cm.setflags(write=False)
        return cm

    def figure(self, name: str) -> Any:
        """A recorded figure (``"accuracy_ci"``, ``"log_loss"``, ``"reliability"``, ...), or None for a run recorded
        before it existed (``featstore.stats.figures.completed`` computes what can be computed)."""
        return self.figures.get(name)

    def accuracy_interval(self) -> tuple[float, float]:
        """The accuracy's 95 % interval: the recorded one, or (a run recorded before intervals) the Wilson interval
        of its ``n`` and accuracy."""
        ci = self.figures.get("accuracy_ci")
        if ci is None:
            from featstore.stats.intervals import wilson_interval

            return wilson_interval(round(self.accuracy * self.n), self.n)
        return ci["low"], ci["high"]


@dataclass(frozen=True)
class StoredSplit:
    """What the run's predictions.npz holds for one split."""

    paths_sha256: str  # digest_paths of the split's images: ensembles average only runs of the same images
    n: int  # rows of probabilities and labels
    listing_sha256: str | None = None  # the split's image listing digest (paths, sizes, times): which images


@dataclass(frozen=True, eq=False, repr=False)
class RunRecord(Mapping[str, Any]):
    """One validated ``run.json`` (see the module docstring); build it with :meth:`from_json`.

    The names every listing shows are plain fields; the others are built (and frozen) when first read, so listing
    a thousand runs costs little more than reading their JSON.
    """

    id: str  # the run folder's name, e.g. "logreg-1a2b3c"
    kind: str  # "fit", "ensemble" or "finetune": its entry in featstore.runs.kinds
    created_at: str  # local time, %Y-%m-%dT%H:%M:%S%z
    extractor: str  # the store group the run was made on (an ensemble: its members' groups joined by "+")
    fingerprint: str  # that group's fingerprint (an ensemble: one per distinct member group, joined by "+")
    clf: str  # classifier name, or "ensemble" / "finetune"
    predictions_sha256: str  # of predictions.npz
    _json: dict = field(repr=False)  # the validated JSON object; never handed out (the mapping view gives copies)

    @classmethod
    def from_json(cls, obj: object, folder: Path, kind: KindSchema) -> RunRecord:
        """The record of ``folder`` from its JSON object, after every check (the one validation path); else BrokenRunError.

        ``obj`` becomes the record's own: the caller must not change it afterwards.
        """
        where = str(folder / RECORD)
        if not isinstance(obj, dict):
            raise BrokenRunError(f"{where} is not a JSON object", f"remove the folder {folder}")
        check_fields(obj, {**COMMON, **kind.fields, **{k: t for k, t in OPTIONAL.items() if k in obj}}, where, folder)
        if not valid_name(obj["id"]) or obj["id"] != folder.name:
            raise BrokenRunError(
                f"{where}: id {obj['id']!r} is not a valid run id or not its folder's name {folder.name!r}",
                "remove the folder or restore its run.json",
            )
        # split names, as a store allows them
        bad = [n for n in [*obj["metrics"], *obj["predictions"]] if not is_plain_name(n)]
        if bad:
            raise_bad_names(bad, where, folder)
        k = len(obj["class_names"])
        for split, m in obj["metrics"].items():
            check_metrics(m, k, f"{where}: metrics of {split!r}", folder)
        for key in ("history", "phase_a_history"):
            if not all(isinstance(v, list) and set(map(type, v)) <= _NUMBERS for v in obj.get(key, {}).values()):
                raise BrokenRunError(
                    f"{where}: {key} must map names to lists of numbers", f"remove the folder {folder}"
                )
        candidates = obj.get("selection", {}).get("candidates", [])
        for c in candidates if isinstance(candidates, list) else [None]:
            check_fields(
                c if isinstance(c, dict) else {},
                {"params": dict, "score": (int, float)},
                f"{where}: a selection candidate",
                folder,
            )
        for split, p in obj["predictions"].items():
            p = p if isinstance(p, dict) else {}  # (null or a number: `in p` raised a TypeError, attack 37 #2)
            check_fields(
                p,
                {"paths_sha256": str, "n": int, **({"listing_sha256": str} if "listing_sha256" in p else {})},
                f"{where}: predictions of {split!r}",
                folder,
            )
        if "calibration" in obj:
            check_calibration(obj["calibration"], where, folder)
        check_budget(obj, where, folder)
        if not set(map(type, obj["class_names"])) <= {str}:
            raise BrokenRunError(f"{where}: class_names must be strings", f"remove the folder {folder}")
        kind.check_record(obj, where, folder)
        return cls(
            *(obj[k] for k in ("id", "kind", "created_at", "extractor", "fingerprint", "clf", "predictions_sha256")),
            _json=obj,
        )

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self._json["class_names"])

    @cached_property
    def params(self) -> Mapping[str, Any]:
        """The chosen parameters."""
        return freeze(self._json["params"])

    @cached_property
    def metrics(self) -> Mapping[str, SplitMetrics]:
        """Split -> its metrics."""
        return MappingProxyType(
            {
                s: SplitMetrics(
                    m["n"],
                    m["accuracy"],
                    m["macro_f1"],
                    freeze(m["per_class"]),
                    freeze(m["confusion_matrix"]),
                    freeze({k: v for k, v in m.items() if k not in _SPLIT_FIELDS}),
                )
                for s, m in self._json["metrics"].items()
            }
        )

    @cached_property
    def predictions(self) -> Mapping[str, StoredSplit]:
        """Split -> what predictions.npz holds for it."""
        return MappingProxyType(
            {
                s: StoredSplit(p["paths_sha256"], p["n"], p.get("listing_sha256"))
                for s, p in self._json["predictions"].items()
            }
        )

    @cached_property
    def artifact(self) -> Mapping[str, str] | None:
        """The model file (fit, finetune): file, format, sha256 (and meta_file, meta_sha256 for a Keras head)."""
        return freeze(self._json.get("artifact"))

    @cached_property
    def extractor_attrs(self) -> Mapping[str, Any] | None:
        """The store group's provenance (fit, finetune)."""
        return freeze(self._json.get("extractor_attrs"))

    @cached_property
    def members(self) -> tuple[str, ...]:
        """Run ids (ensemble)."""
        return tuple(self._json.get("members", ()))

    @cached_property
    def weights(self) -> tuple[float, ...]:
        """One per member (ensemble)."""
        return tuple(float(w) for w in self._json.get("weights", ()))

    @cached_property
    def history(self) -> Mapping[str, tuple[float, ...]]:
        """Training curves (dense head, fine-tuning); empty otherwise."""
        return freeze(self._json.get("history", {}))

    @cached_property
    def calibration(self) -> Mapping[str, Any]:
        """How the run's probabilities are calibrated (``featstore.stats.calibration``): a temperature, or none (a run
        recorded before calibration existed, an ensemble of calibrated members)."""
        return freeze(self._json.get("calibration", {"method": "none", "input": "probabilities"}))

    @cached_property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._json.get("notes", ()))

    def to_json(self) -> dict:
        """The record as the JSON object ``run.json`` holds (a new, plain dict)."""
        return thaw(self._json)

    def accuracy(self, split: str) -> float | None:
        """Accuracy on ``split``, or None when the run was not evaluated there."""
        m = self._json["metrics"].get(split)
        return None if m is None else m["accuracy"]

    def __getitem__(self, key: str) -> Any:
        return thaw(self._json[key])

    def __contains__(self, key: object) -> bool:
        return key in self._json

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    def __repr__(self) -> str:
        return f"RunRecord(id={self.id!r}, kind={self.kind!r}, clf={self.clf!r}, extractor={self.extractor!r})"


_SCALARS = frozenset({str, int, float, bool, type(None)})  # JSON's leaves: returned as they are, without a call


class FrozenJSON(Mapping[str, Any]):
    """A read-only view of a JSON object whose nested values are frozen when read, not all at once: `featstore runs`
    reads two accuracies of each run's ~900 recorded values, and freezing them all cost a third of the listing. The
    object it wraps is the record's own, which nothing changes."""

    __slots__ = ("_obj",)

    def __init__(self, obj: dict):
        self._obj = obj

    def __getitem__(self, key: str) -> Any:
        return freeze(self._obj[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._obj)

    def __len__(self) -> int:
        return len(self._obj)

    def __repr__(self) -> str:
        return f"FrozenJSON({self._obj!r})"


def freeze(value: Any) -> Any:
    """A JSON value made immutable: dicts become read-only mappings (nested values frozen when read), lists tuples."""
    t = type(value)
    if t in _SCALARS:
        return value
    if isinstance(value, dict):
        return FrozenJSON(value)
    if isinstance(value, list):
        return tuple(v if type(v) in _SCALARS else freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A (frozen or plain) JSON value as new plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [thaw(v) for v in value]
    return value


def digest_paths(paths: list[str]) -> str:
    """sha256 of a split's image paths, each as its file-system bytes (a non-UTF-8 name hashes as its own bytes)."""
    return hashlib.sha256(b"\n".join(os.fsencode(p) for p in paths)).hexdigest()


def split_identity(fs, name: str, split: str, rows: int = 1 << 16) -> tuple[str, str]:
    """``(paths digest, listing digest)`` of split ``split`` of extractor ``name`` in ``fs`` (a FeatureStore): which
    images its rows are, as a run records them. The paths are read ``rows`` at a time (a million-row split's paths
    are never held whole); the digest is :func:`digest_paths` of them all (tests/test_sweep_reuse.py)."""
    from featstore.store.digests import split_listing

    info = fs.split_info(split, name)
    h, n = hashlib.sha256(), int(info["committed_rows"])
    for at in range(0, n, rows):
        block = fs.paths(split, name, start=at, stop=min(at + rows, n))
        h.update((b"\n" if at else b"") + b"\n".join(os.fsencode(p) for p in block))
    return h.hexdigest(), split_listing(info)


def versions() -> dict:
    """featstore's and its libraries' versions, as a run records them (read from metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"featstore": __version__}
    for dist in VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            out[dist] = None
    return out


def draft(kind: str, clf: str, **fields: Any) -> dict:
    """A new run's JSON before it is written: a fresh id ``<clf>-<6 hex>``, the kind, the time, the versions, ``fields``.

    ``featstore.runs.write.write_run`` adds the artifact and the predictions and validates it. Example::

        draft("fit", "logreg", extractor="vgg16", fingerprint=fp, ...)
    """
    return {
        "id": f"{clf}-{secrets.token_hex(3)}",
        "kind": kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "clf": clf,
        **fields,
        "versions": versions(),
    }

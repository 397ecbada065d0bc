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
import itertools
import math
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from featstore.runs.files import RECORD, BrokenRunError, valid_name
from featstore.version import __version__

Types = type | tuple[type, ...]
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
}
METRIC_FIELDS: dict[str, Types] = {
    "n": int,
    "accuracy": (int, float),
    "macro_f1": (int, float),
    "per_class": dict,
    "confusion_matrix": list,
}
PER_CLASS = ("precision", "recall", "f1", "support")
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
    confusion_matrix: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class


@dataclass(frozen=True)
class StoredSplit:
    """What the run's predictions.npz holds for one split."""

    paths_sha256: str  # digest_paths of the split's images: ensembles average only runs of the same images
    n: int  # rows of probabilities and labels


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
            raise BrokenRunError(f"{where} is not a JSON object; remove the folder {folder}")
        check_fields(obj, {**COMMON, **kind.fields, **{k: t for k, t in OPTIONAL.items() if k in obj}}, where, folder)
        if not valid_name(obj["id"]) or obj["id"] != folder.name:
            raise BrokenRunError(
                f"{where}: id {obj['id']!r} is not a valid run id or not its folder's name {folder.name!r}; "
                f"remove the folder or restore its run.json"
            )
        bad = [n for n in [*obj["metrics"], *obj["predictions"]] if not valid_name(n)]
        if bad:
            raise_bad_names(bad, where, folder)
        k = len(obj["class_names"])
        for split, m in obj["metrics"].items():
            _check_metrics(m, k, f"{where}: metrics of {split!r}", folder)
        for key in ("history", "phase_a_history"):
            if not all(isinstance(v, list) and set(map(type, v)) <= _NUMBERS for v in obj.get(key, {}).values()):
                raise BrokenRunError(f"{where}: {key} must map names to lists of numbers; remove the folder {folder}")
        candidates = obj.get("selection", {}).get("candidates", [])
        for c in candidates if isinstance(candidates, list) else [None]:
            check_fields(
                c if isinstance(c, dict) else {},
                {"params": dict, "score": (int, float)},
                f"{where}: a selection candidate",
                folder,
            )
        for split, p in obj["predictions"].items():
            check_fields(
                p if isinstance(p, dict) else {},
                {"paths_sha256": str, "n": int},
                f"{where}: predictions of {split!r}",
                folder,
            )
        if not set(map(type, obj["class_names"])) <= {str}:
            raise BrokenRunError(f"{where}: class_names must be strings; remove the folder {folder}")
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
                    m["n"], m["accuracy"], m["macro_f1"], freeze(m["per_class"]), freeze(m["confusion_matrix"])
                )
                for s, m in self._json["metrics"].items()
            }
        )

    @cached_property
    def predictions(self) -> Mapping[str, StoredSplit]:
        """Split -> what predictions.npz holds for it."""
        return MappingProxyType(
            {s: StoredSplit(p["paths_sha256"], p["n"]) for s, p in self._json["predictions"].items()}
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


_NUMBERS = {int, float}  # JSON numbers, as json.loads types them (never bool)


def _number(x: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _type_name(t: Types) -> str:
    """``dict`` -> "dict", ``(int, float)`` -> "int or float"."""
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def check_fields(obj: dict, fields: Mapping[str, Types], where: str, folder: Path) -> None:
    """BrokenRunError unless ``obj`` has every key of ``fields`` with a value of its type (a bool is no number)."""
    missing = [k for k in fields if k not in obj]
    if missing:
        raise BrokenRunError(
            f"{where} lacks {', '.join(missing)} (damaged, or written by an older featstore); "
            f"remove the folder {folder} and fit again"
        )
    wrong = [
        f"{k} must be {_type_name(t)}"
        for k, t in fields.items()
        if not isinstance(obj[k], t) or (isinstance(obj[k], bool) and t is not bool)
    ]
    if wrong:
        raise BrokenRunError(f"{where}: {', '.join(wrong)}; remove the folder {folder} or restore its run.json")


def raise_bad_names(bad: list, where: str, folder: Path) -> None:
    """The BrokenRunError for split or run names that could not be file names."""
    raise BrokenRunError(
        f"{where} holds invalid split or run names {bad!r} (only letters, digits and ._- are allowed, "
        f"not starting with a dot); remove the folder {folder}"
    )


def _check_metrics(m: object, k: int, where: str, folder: Path) -> None:
    """BrokenRunError unless ``m`` is one split's metrics of ``k`` classes."""
    check_fields(m if isinstance(m, dict) else {}, METRIC_FIELDS, where, folder)
    cm, per_class = m["confusion_matrix"], m["per_class"].values()
    if (
        len(cm) != k
        or not all(type(r) is list and len(r) == k for r in cm)
        or not set(map(type, itertools.chain.from_iterable(cm))) <= {int}
        or not all(isinstance(v, dict) and set(map(type, map(v.get, PER_CLASS))) <= _NUMBERS for v in per_class)
    ):
        raise BrokenRunError(
            f"{where} need a {k}x{k} integer confusion matrix and per-class "
            f"{', '.join(PER_CLASS)}; remove the folder {folder}"
        )


def check_weights(weights: object, n: int) -> bool:
    """Whether ``weights`` are ``n`` finite non-negative numbers, not all zero (an ensemble's)."""
    return (
        isinstance(weights, (list, tuple))
        and len(weights) == n
        and all(_number(w) and math.isfinite(w) and w >= 0 for w in weights)
        and 0 < sum(weights) < math.inf
    )


def freeze(value: Any) -> Any:
    """A JSON value made immutable: dicts become read-only mappings, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
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

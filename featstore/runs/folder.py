"""Run folders on disk: names, reading and validating ``run.json`` and what it names, checksums, broken folders.

A run folder ``<runs>/<id>/`` holds ``run.json``, the fitted model and ``predictions.npz``; ``run.json``
records the sha256 of the other files. Everything read from a folder is treated as untrusted: ids and
split names must be plain names, files must be regular files inside the folder with the recorded
sha256, zips must declare sane sizes (``safezip``), stored predictions must have the recorded shapes and
valid values, and a folder that fails any check is listed as broken (with the reason) instead of being used.
Writing run folders (temporary folders, orphans, atomic replacement) is in ``runwrite``.

>>> valid_name("logreg-1a2b3c"), valid_name("../x"), valid_name(".")
(True, False, False)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.provenance import MAX_IMAGE_SIZE
from featstore.safezip import check_zip, read_npy

logger = logging.getLogger(__name__)

RECORD = "run.json"
PREDICTIONS = "predictions.npz"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # run ids and split names: no separators, not "." or ".."
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {  # run.json keys every reader relies on, by run kind
    "any": {
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
    },
    "fit": {"artifact": dict, "extractor_attrs": dict},
    "ensemble": {"members": list, "weights": list},
    "finetune": {"artifact": dict, "extractor_attrs": dict, "from_run": str, "unfreeze_from": str},
}
_FINETUNE_PARAMS = {
    "lr": (int, float),
    "optimizer": str,
    "epochs": int,
    "batch_size": int,
    "patience": int,
    "augment": str,
    "seed": int,
    "from_scratch_head": bool,
}  # a finetune run's params, as listings and reports show them
_METRIC_FIELDS = {
    "n": int,
    "accuracy": (int, float),
    "macro_f1": (int, float),
    "per_class": dict,
    "confusion_matrix": list,
}
_PER_CLASS = ("precision", "recall", "f1", "support")
_OPTIONAL = {
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
}  # checked when present


class BrokenRunError(StoreError):
    """A run folder that cannot be used (damaged, incomplete or crafted); the message names the file and the fix."""


@dataclass
class RunListing:
    """The runs of a runs folder: usable records (oldest first) and broken folders with their reasons."""

    records: list[dict] = field(default_factory=list)  # validated run.json contents
    broken: list[tuple[str, str]] = field(default_factory=list)  # (folder name, why it cannot be used)


def valid_name(name: object) -> bool:
    """True for a plain name usable in a file name: letters, digits, ``._-``, not starting with a dot."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def runs_dir(store: str | os.PathLike) -> Path:
    """Where the runs of a store live: ``features.h5`` -> ``features.runs/``."""
    return Path(store).with_suffix(".runs")


def runs_root(store: str | os.PathLike, runs: str | os.PathLike | None) -> Path:
    """``runs`` if given, else the store's default runs folder."""
    return Path(runs) if runs else runs_dir(store)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    from featstore.models.weights import sha256_file

    return sha256_file(path)


def regular_file(folder: Path, name: object, what: str) -> Path:
    """``folder/name`` after checking that ``name`` is a plain name and the file a regular file (not a link, FIFO or device)."""
    if not valid_name(name):
        raise BrokenRunError(
            f"{folder / RECORD} names {what} {name!r}, which is not a plain file name; refusing to read it. "
            f"Remove the run folder {folder}."
        )
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BrokenRunError(
            f"{what} {path} is missing; the run folder is incomplete. Remove {folder} and fit again."
        ) from None
    if not stat.S_ISREG(mode):
        raise BrokenRunError(
            f"{what} {path} is not a regular file (a link, folder or device); refusing to read it. Remove {folder}."
        )
    return path


def verify_file(folder: Path, name: object, expected: object, what: str) -> Path:
    """``folder/name`` after checking that it is a regular file whose sha256 is the recorded one."""
    path = regular_file(folder, name, what)
    got = sha256_of(path)
    if got != expected:
        raise BrokenRunError(
            f"{what} {path} has sha256 {got[:12]}, the run recorded {str(expected)[:12]}: it was changed "
            f"after the fit. Refusing to load it; fit the classifier again."
        )
    return path


def output_path(folder: Path, name: str) -> Path:
    """Where to write ``name`` inside ``folder``: a plain name, not through a link, resolved inside the folder."""
    if not valid_name(name):
        raise BrokenRunError(f"refusing to write {name!r} into {folder}: not a plain file name")
    path = folder / name
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise BrokenRunError(
            f"{path} is a link or leads outside {folder}; refusing to write through it. Remove it and retry."
        )
    return path


def ensure_writable(root: Path) -> None:
    """Create the runs folder if needed and prove a run can be written there (checked before any fitting)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=root))
    except OSError as exc:
        raise StoreError(
            f"cannot write runs into {root} ({exc.strerror or exc}); make it writable or pass --runs DIR "
            f"with a writable folder"
        ) from None


def _type_name(t: type | tuple[type, ...]) -> str:
    """``dict`` -> "dict", ``(int, float)`` -> "int or float"."""
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def _check_fields(obj: dict, fields: dict, where: str, folder: Path) -> None:
    """BrokenRunError unless ``obj`` has every key of ``fields`` with a value of its type."""
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


def _check_record(rec: object, folder: Path) -> dict:
    """The record, if it has every key readers rely on with the right types and only plain names; else BrokenRunError."""
    where = folder / RECORD
    if not isinstance(rec, dict):
        raise BrokenRunError(f"{where} is not a JSON object; remove the folder {folder}")
    if rec.get("kind") not in ("fit", "ensemble", "finetune"):
        raise BrokenRunError(
            f"{where}: kind {rec.get('kind')!r} is not fit, ensemble or finetune; remove the folder {folder}"
        )
    _check_fields(
        rec,
        {**_FIELDS["any"], **_FIELDS[rec["kind"]], **{k: t for k, t in _OPTIONAL.items() if k in rec}},
        str(where),
        folder,
    )
    if not valid_name(rec["id"]) or rec["id"] != folder.name:
        raise BrokenRunError(
            f"{where}: id {rec['id']!r} is not a valid run id or not its folder's name {folder.name!r}; "
            f"remove the folder or restore its run.json"
        )
    if rec["kind"] == "finetune":
        _check_fields(rec["params"], _FINETUNE_PARAMS, f"{where}: params of the fine-tuning", folder)
    members = rec["members"] if rec["kind"] == "ensemble" else []
    bad = [n for n in [*rec["metrics"], *rec["predictions"], *members] if not valid_name(n)]
    if bad:
        raise BrokenRunError(
            f"{where} holds invalid split or run names {bad!r} (only letters, digits and ._- are allowed, "
            f"not starting with a dot); remove the folder {folder}"
        )
    k = len(rec["class_names"])
    for split, m in rec["metrics"].items():
        _check_fields(m if isinstance(m, dict) else {}, _METRIC_FIELDS, f"{where}: metrics of {split!r}", folder)
        cm, per_class = m["confusion_matrix"], m["per_class"].values()
        if (
            len(cm) != k
            or not all(isinstance(r, list) and len(r) == k and all(isinstance(c, int) for c in r) for r in cm)
            or not all(
                isinstance(v, dict) and all(isinstance(v.get(x), (int, float)) for x in _PER_CLASS) for v in per_class
            )
        ):
            raise BrokenRunError(
                f"{where}: metrics of {split!r} need a {k}x{k} integer confusion matrix and per-class "
                f"{', '.join(_PER_CLASS)}; remove the folder {folder}"
            )
    for key in ("history", "phase_a_history"):
        if not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in rec.get(key, {}).values()
        ):
            raise BrokenRunError(f"{where}: {key} must map names to lists of numbers; remove the folder {folder}")
    candidates = rec.get("selection", {}).get("candidates", [])
    for c in candidates if isinstance(candidates, list) else [None]:
        _check_fields(
            c if isinstance(c, dict) else {},
            {"params": dict, "score": (int, float)},
            f"{where}: a selection candidate",
            folder,
        )
    for split, p in rec["predictions"].items():
        _check_fields(
            p if isinstance(p, dict) else {},
            {"paths_sha256": str, "n": int},
            f"{where}: predictions of {split!r}",
            folder,
        )
    if not all(isinstance(c, str) for c in rec["class_names"]):
        raise BrokenRunError(f"{where}: class_names must be strings; remove the folder {folder}")
    weights = rec["weights"] if members else []
    if members and (
        len(weights) != len(members)
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
        or not all(math.isfinite(w) and w >= 0 for w in weights)
        or not 0 < sum(weights) < math.inf
    ):
        raise BrokenRunError(
            f"{where}: weights must be one finite non-negative number per member, not all zero; "
            f"remove the folder {folder}"
        )
    if rec["kind"] != "ensemble" and rec["extractor_attrs"].get("fingerprint") != rec["fingerprint"]:
        raise BrokenRunError(f"{where}: the fingerprint does not match extractor_attrs; remove the folder {folder}")
    size = rec["extractor_attrs"].get("input_size") if rec["kind"] != "ensemble" else None
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_IMAGE_SIZE):
        raise BrokenRunError(
            f"{where}: extractor_attrs.input_size {size!r} is not an image side featstore uses (0 to "
            f"{MAX_IMAGE_SIZE}); predicting with it would decode images of any size. Remove the folder {folder}"
        )
    return rec


def read_run(folder: Path) -> dict:
    """A run's validated record, after checking every file it names (sha256, and the model's types); else BrokenRunError."""
    from featstore.runs.artifacts import check_artifact

    if folder.is_symlink() or not folder.is_dir():
        raise BrokenRunError(
            f"{folder} is a link or not a folder; run folders must be real folders inside the runs folder. Remove it."
        )
    try:
        rec = json.loads(regular_file(folder, RECORD, "run record").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BrokenRunError(
            f"{folder / RECORD} is not valid JSON ({exc}); remove the folder {folder} or restore it"
        ) from None
    _check_record(rec, folder)
    if rec["kind"] != "ensemble":
        check_artifact(folder, rec["artifact"])
    load_predictions(folder, rec)  # small (probabilities of validation and test): read to prove it is whole
    return rec


def scan_runs(root: Path) -> RunListing:
    """Every run folder under ``root``: valid records sorted oldest first, and broken folders with their reasons."""
    out = RunListing()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d.is_dir() or d.is_symlink()):  # files such as compare.png are not runs
            continue
        try:
            out.records.append(read_run(d))
        except StoreError as exc:
            out.broken.append((d.name, str(exc)))
            logger.debug("run folder %s is broken: %s", d, exc)
    out.records.sort(key=lambda r: (r["created_at"], r["id"]))
    return out


def find_run(run_id: str, root: Path, exact: bool = False, listing: RunListing | None = None) -> tuple[dict, Path]:
    """A run's record and folder, by id or (unless ``exact``) unique id prefix; a broken run raises its reason."""
    listing = scan_runs(root) if listing is None else listing
    names = [r["id"] for r in listing.records] + [name for name, _ in listing.broken]
    found = [n for n in names if n == run_id] or ([] if exact else [n for n in names if n.startswith(run_id)])
    if len(found) != 1:
        known = ", ".join(r["id"] for r in listing.records) or "none"
        what = "no run" if not found else "several runs"
        raise ConfigError(f"{what} with id {run_id!r} in {root}; runs there: {known}")
    broken = dict(listing.broken)
    if found[0] in broken:
        raise BrokenRunError(f"run {found[0]} is broken: {broken[found[0]]}")
    return next(r for r in listing.records if r["id"] == found[0]), root / found[0]


def check_zip_file(path: Path, what: str, folder: Path, kind: str) -> None:
    """BrokenRunError unless ``path`` is a zip whose declared sizes are sane (``safezip.check_zip``: no zip bombs)."""
    try:
        check_zip(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BrokenRunError(
            f"{what} {path} cannot be read: it is not a readable {kind} ({exc}); refusing to load it. "
            f"Remove the folder {folder} and fit again."
        ) from None
    except ValueError as exc:
        raise BrokenRunError(f"{what} {path} is refused: {exc}. Remove the folder {folder} and fit again.") from None


def load_predictions(folder: Path, rec: dict) -> dict[str, np.ndarray]:
    """A run's stored validation/test probabilities and labels, after checking the file's recorded sha256, its zip sizes,
    and that each split has ``n`` rows (the recorded count) of probabilities in [0, 1], one column per class, and labels
    of those classes."""
    path = verify_file(folder, PREDICTIONS, rec["predictions_sha256"], "stored predictions")
    check_zip_file(path, "stored predictions", folder, "npz file")
    k, out = len(rec["class_names"]), {}
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:  # our handle: zipfile leaks none on a bad zip
            missing = sorted(
                f"{s}__{a}"
                for s in rec["predictions"]
                for a in ("proba", "labels")
                if f"{s}__{a}.npy" not in z.namelist()
            )
            if missing:
                raise BrokenRunError(
                    f"stored predictions {path} lack {', '.join(missing)}; remove the folder {folder} and fit again"
                )
            for split, info in rec["predictions"].items():
                proba = read_npy(z, f"{split}__proba.npy", "f", (info["n"], k))  # header checked before numpy allocates
                labels = read_npy(z, f"{split}__labels.npy", "iu", (info["n"],))
                if not (np.isfinite(proba).all() and (proba >= -1e-6).all() and (proba <= 1 + 1e-6).all()):
                    raise ValueError(f"{split}__proba holds NaN, inf or values outside [0, 1]")
                if labels.size and (labels.min() < 0 or labels.max() >= k):
                    raise ValueError(f"{split}__labels holds labels outside 0..{k - 1}")
                out[f"{split}__proba"], out[f"{split}__labels"] = proba, labels
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BrokenRunError(
            f"stored predictions {path} cannot be read or do not match run.json ({exc}); "
            f"remove the folder {folder} and fit again"
        ) from None
    return out


def _json_default(o):
    """numpy scalars and arrays as plain JSON values."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")

"""``featstore check``: validate a store's layout, attributes and contents, and say how to fix each problem.

>>> problems = check_store("features.h5")   # doctest: +SKIP
>>> problems
[]
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from .store import FINGERPRINT_FIELDS, FORMAT_VERSION, _attrs, _plain, fingerprint, foreign_objects, open_h5

SPLIT_ATTRS = ("class_names", "commit", "n_images", "complete", "source_root")
RESUME = "re-run the same `featstore extract` to resume (it truncates the uncommitted tail)"
REDO = "re-extract this split with --overwrite"


def check_store(path: str | os.PathLike, *, locking=None) -> list[str]:
    """Every problem found in the store, each with its fix; an empty list means the store is sound."""
    problems: list[str] = []
    with open_h5(path, "r", locking=locking) as f:
        for obj in foreign_objects(f):
            problems.append(f"{obj} points outside the store; featstore never writes it: remove it (h5py: del f[name])")
        version = f.attrs.get("format_version")
        if version is None:
            problems.append("root attribute format_version is missing: this is not a featstore store (or it is damaged)")
        elif int(version) > FORMAT_VERSION:
            problems.append(f"format_version {version} is newer than this featstore reads ({FORMAT_VERSION}): upgrade featstore")
        for name in f:
            if isinstance(f[name], h5py.Group):
                problems += _check_extractor(f[name], name)
    return problems


def _check_extractor(g: h5py.Group, name: str) -> list[str]:
    out = []
    a = _attrs(g)
    missing = [k for k in (*FINGERPRINT_FIELDS, "fingerprint") if k not in a]
    if missing:
        return [f"/{name}: attributes missing: {', '.join(missing)}; extract it again into a new store"]
    if fingerprint(a) != a["fingerprint"]:
        out.append(f"/{name}: fingerprint attribute does not match its provenance attributes (edited after writing?); extract it again")
    classes = None
    for split in g:
        sg = g[split]
        where = f"/{name}/{split}"
        missing = [k for k in ("features", "labels", "paths", "failed/paths", "failed/reasons") if k not in sg]
        missing += [f"@{k}" for k in SPLIT_ATTRS if k not in sg.attrs]
        if missing:
            out.append(f"{where}: missing {', '.join(missing)}; {REDO}")
            continue
        s = _attrs(sg)
        if classes is None:
            classes = s["class_names"]
        elif s["class_names"] != classes:
            out.append(f"{where}: class_names {s['class_names']} differ from the other splits' {classes}; {REDO} using the same class folders")
        out += _check_split(sg, s, a, where)
    return out


def _check_split(sg: h5py.Group, s: dict, a: dict, where: str) -> list[str]:
    out = []
    n = int(s["committed_rows"])
    feats, labels, paths = sg["features"], sg["labels"], sg["paths"]
    sizes = {k: sg[k].shape[0] for k in ("features", "labels", "paths")}
    if min(sizes.values()) < n:
        out.append(f"{where}: committed_rows {n} but datasets hold {sizes}: rows were lost; {REDO}")
        return out
    if max(sizes.values()) > n:
        out.append(f"{where}: {max(sizes.values()) - n} uncommitted rows after committed_rows {n} (an interrupted write); {RESUME}")
    if list(feats.shape[1:]) != list(_plain(a["feature_shape"])) or str(feats.dtype) != a["dtype"]:
        out.append(f"{where}: features are {feats.shape[1:]} {feats.dtype}, the extractor says {a['feature_shape']} {a['dtype']}; {REDO}")
    if int(s["images_done"]) != n + int(s["n_failed"]):
        out.append(f"{where}: images_done {s['images_done']} != committed_rows {n} + n_failed {s['n_failed']}; {REDO}")
    if sg["failed/paths"].shape[0] < int(s["n_failed"]):
        out.append(f"{where}: n_failed {s['n_failed']} but only {sg['failed/paths'].shape[0]} failure records; {REDO}")
    if s["complete"] and int(s["images_done"]) != int(s["n_images"]):
        out.append(f"{where}: marked complete with {s['images_done']} of {s['n_images']} images done; {REDO}")
    y = labels[:n]
    if n and (y.min() < 0 or y.max() >= len(s["class_names"])):
        out.append(f"{where}: labels outside 0..{len(s['class_names']) - 1}; {REDO}")
    names = paths.asstr()[:n]
    if len(set(names)) != n:
        out.append(f"{where}: {n - len(set(names))} duplicated paths (rows written twice); {REDO}")
    step = max(1, (feats.chunks or (1024,))[0]) * 16
    bad = 0
    for i in range(0, n, step):
        block = feats[i:min(i + step, n)]
        bad += int(np.count_nonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1)))
    if bad:
        out.append(f"{where}: {bad} rows contain NaN or inf; check the images and weights, then {REDO}")
    return out

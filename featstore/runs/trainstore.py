"""Which store holds the rows a run was fitted on: the store a command was given only when its training split is the one
the run recorded (attack 76 #3).

The "fitted on these rows" marks compare a split's rows with the run's training split (:mod:`featstore.runs.fittedrows`).
Taking that split by name from whatever store the command got (``runs evaluate --store OTHER``, or ``runs show`` beside
an unrelated ``./features.h5``, the default) compared the wrong rows: a resubstitution 1.000 printed as an estimate, a
``runs compare`` verdict "larger than chance" on a 1-NN's own training rows, rows a run never saw marked as its training
rows. A fit records its training split's identity (``inputs.splits[train]``: its version, paths digest and listing
digest; :func:`recorded_identity`), so a store's split is used only when it is that split (:func:`not_the_runs`): the
same version (the very split, in a copy of the store too), or the same rows by their listing (an image listing's digest,
or ``arrays:<rows>:<rows digest>``) and paths. A run recording none of it (an older featstore) is matched at the store
path it recorded only. :func:`training_store` tries the store the command was given (``None`` for a default the user
did not name), then the run's recorded store; where neither holds the split, it says why.
"""

from __future__ import annotations

import json
import os
import shlex

from featstore.errors import FeatstoreError
from featstore.outputs import terminal_safe

_STORES: dict = {}  # path -> (file identity, FeatureStore): a store opened once per process and version (74 #7)
_MATCHED: dict = {}  # (file identity, extractor, train, recorded identity) -> why not the run's ("" when it is)


def _identity(path) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _open(store):
    """``(FeatureStore, "")`` for a path or FeatureStore, opened once per file version; ``(None, why)``."""
    from featstore.store.reader import FeatureStore

    if isinstance(store, FeatureStore):
        return store, ""
    try:
        key = str(store)
        ident = _identity(key)
        if key in _STORES and _STORES[key][0] == ident:
            return _STORES[key][1], ""
        fs = FeatureStore(key)
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    if len(_STORES) >= 4:
        _STORES.clear()
    _STORES[key] = (ident, fs)
    return fs, ""


def _splits(fs, name: str) -> list[str]:
    try:
        return list(fs.splits(name)) if name in fs.extractors() else []
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError):
        return []


def same_file(a, b) -> bool:
    """Whether paths (or FeatureStores) ``a`` and ``b`` are one file (False where either cannot be read)."""
    try:
        return _identity(getattr(a, "path", a))[:2] == _identity(getattr(b, "path", b))[:2]
    except (OSError, TypeError, ValueError):
        return False


def recorded_identity(rec, train: str) -> dict | None:
    """What run ``rec`` recorded of its training split ``train``: a fit's ``inputs.splits[train]`` (``version``,
    ``paths_sha256``, ``listing_sha256``), else its stored predictions' entry for it; None where it recorded neither.

    >>> recorded_identity({"inputs": {"splits": {"train": {"version": ["1"], "listing_sha256": "9f"}}}}, "train")
    {'version': ['1'], 'listing_sha256': '9f'}
    >>> recorded_identity({"kind": "fit"}, "train") is None
    True
    """
    for where in (("inputs", "splits"), ("predictions",)):
        got = rec
        for key in (*where, train):
            got = got.get(key) if hasattr(got, "get") else None
        if hasattr(got, "get") and (got.get("version") or got.get("listing_sha256") or got.get("paths_sha256")):
            return {k: got.get(k) for k in ("version", "paths_sha256", "listing_sha256") if got.get(k) is not None}
    return None


def not_the_runs(fs, name: str, train: str, rec) -> str:
    """ "" when split ``train`` of extractor ``name`` in store ``fs`` is the split run ``rec`` was fitted on (the
    version it recorded, or the same rows by listing and paths; a run recording neither: the store at the path it
    recorded, or any where it recorded no store); else why not, one clause naming the store."""
    if train not in _splits(fs, name):
        return f"{fs.path} holds no split {train!r} of {name!r}"
    want, own = recorded_identity(rec, train), rec.get("store")
    if want is None:  # an older featstore's run: nothing tells its training split apart but the store's path
        if own is None or same_file(own, fs):
            return ""
        return f"{fs.path} is not the store the run recorded ({own}), and the run records nothing that identifies its {train!r}"
    try:
        key = (_identity(fs.path), name, train, json.dumps(want, sort_keys=True, default=str))
    except OSError as e:
        return f"{fs.path} cannot be read ({e})"
    if key not in _MATCHED:
        if len(_MATCHED) >= 1 << 10:
            _MATCHED.clear()
        _MATCHED[key] = _match(fs, name, train, want)
    return _MATCHED[key]


def _match(fs, name: str, train: str, want: dict) -> str:
    from featstore.runs.record import split_identity
    from featstore.store.digests import identifies_rows
    from featstore.store.versions import split_versions

    try:
        version = want.get("version")
        if version and [str(v) for v in split_versions(fs, name, [train])[train]] == [str(v) for v in version]:
            return ""  # the very split the run read (in this file or a copy of it)
        listing, paths = want.get("listing_sha256"), want.get("paths_sha256")
        if identifies_rows(listing) and paths and split_identity(fs, name, train) == (paths, listing):
            return ""  # written again from the same rows, or extracted again from the same image files
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:
        return f"{fs.path} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return f"{fs.path}'s {train!r} of {name!r} is not the split the run was fitted on (not the version or rows it recorded)"


def training_store(rec, store, name: str, train: str):
    """``(FeatureStore, "")``: ``store`` (the one the command was given; None for none, or a default the user did not
    name), else the run's recorded store, the first that can be read and whose split ``train`` of extractor ``name``
    is the one the run was fitted on (:func:`not_the_runs`); ``(None, why)`` where neither is (attack 76 #3; 74 #3:
    said, not silent)."""
    recorded = rec.get("store")
    tried = []
    for cand in dict.fromkeys(c for c in (store, recorded) if c is not None and not isinstance(c, (bool, int))):
        fs, why = _open(cand)
        label = getattr(cand, "path", cand)
        if fs is None:
            tried.append(f"{label} cannot be read ({why})")
        elif why := not_the_runs(fs, name, train, rec):
            tried.append(why)
        else:
            return fs, ""
    if not tried:
        return None, "the run records no store"
    fix = "; pass --store with the store it was fitted on" if store is None else ""
    return None, "its rows could not be compared: " + "; ".join(dict.fromkeys(tried)) + fix


def scored_elsewhere(rec, sfs, name: str, splits, root=None) -> dict[str, str]:
    """``{split: why its rows are not compared}`` for each of ``splits`` that run ``rec`` recorded figures on
    (``predictions[split]``: its paths digest and listing digest) and that ``sfs``'s split of that name is not: the
    split re-made with other rows since, or another store's split named alike (attack 78 #1b: its figures, recorded on
    the old rows, were compared as the store is now). A run recording no listing is matched by its paths alone. Each
    split's identity is read once per process and store version, whatever the runs recorded (attack 81 #4: once per
    recorded digest, runs x rows). ``root``: the runs folder the run was read from (named in the printed command)."""
    predictions = rec.get("predictions")
    out, present = {}, _splits(sfs, name)
    for split in (s for s in splits if s in present):  # one it lacks: fitted_rows_said says "holds no split"
        want = predictions.get(split) if hasattr(predictions, "get") else None
        want = want if hasattr(want, "get") else getattr(want, "__dict__", None)
        paths = want.get("paths_sha256") if want else None
        if not isinstance(paths, str):
            continue  # no figure recorded there (a split asked for by name): nothing to hold it to
        listing = want.get("listing_sha256")
        try:
            here_paths, here_listing = _split_now(sfs, name, split)
        except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:
            out[split] = (
                f"{sfs.path}'s {split!r} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            )
            continue
        if here_paths == paths and (listing is None or here_listing == listing):
            continue
        arrays = here_listing.startswith("arrays:")  # rows written from arrays: their digest differs
        how = "rows" if arrays else "listing" if here_paths == paths else "images"
        out[split] = _elsewhere_why(rec, sfs, name, split, how, root)
    return out


_NOW: dict = {}  # (file identity, extractor, split) -> (paths digest, listing digest): read once per store version


def _split_now(sfs, name: str, split: str) -> tuple[str, str]:
    """:func:`featstore.runs.record.split_identity` of ``sfs``'s split, once per process and store file version."""
    from featstore.runs.record import split_identity

    key = (_identity(sfs.path), name, split)
    if key not in _NOW:
        if len(_NOW) >= 1 << 8:
            _NOW.clear()
        _NOW[key] = split_identity(sfs, name, split)
    return _NOW[key]


def _elsewhere_why(rec, sfs, name: str, split: str, how: str, root=None) -> str:
    """Why a recorded figure's split ``split`` of ``sfs`` is not compared (:func:`scored_elsewhere`): the same image
    paths with another listing (extracted again: the listing holds each file's size and time, so touched or copied files
    differ too; attack 80 #3 said "other rows" of the same images) or other paths; what to run."""
    if how == "rows":
        what = (
            f"{sfs.path}'s {split!r} of {name!r} holds other rows than the run's figures there were scored on (written "
            f"again since, or another store's split of that name)"
        )
    elif how == "listing":
        what = (
            f"{sfs.path}'s {split!r} of {name!r} was extracted again since the run's figures there were recorded (the "
            f"same image paths, another listing: other files under those names, or the same files copied or touched)"
        )
    else:
        what = (
            f"{sfs.path}'s {split!r} of {name!r} holds other images than the run's figures there were scored on "
            f"(made again since, or another store's split of that name)"
        )
    rid, own, here = rec.get("id") or "ID", rec.get("store"), shlex.quote(str(sfs.path))
    runs = f" --runs {shlex.quote(str(root))}" if root is not None else ""  # where the run is (attack 81 #2)
    elsewhere = (
        f"; or pass --store {shlex.quote(own)}, the store they were scored on"
        if own and not same_file(own, sfs)
        else ""
    )
    return terminal_safe(  # names printed to a terminal escaped (a path holding an escape sequence)
        f"{what}: `featstore runs evaluate {rid} --split {shlex.quote(split)} --store {here}{runs}` scores and marks "
        f"the split as it is now{elsewhere}"
    )

"""Before a write: what the store already holds of a split, read in the one opening a command's checks share.

:func:`survey` tells which extractor groups still need a split (or its augmented copies), whether a killed run left
one of them partial (then the store is compacted before anything is written), and how many images they hold already.
Whether a complete split counts as done is the caller's question, asked per group with the open file:
:func:`split_done` (the same configuration and the same images) or :func:`copies_done` (the same copies). Nothing here
opens the file: the caller passes it open, so every check before a write is one opening.

>>> with store.read_if_exists() as f:                                                  # doctest: +SKIP
...     s = survey(f, store.path, ["vgg16"], "train", lambda f, n: split_done(f, store.path, n, "train", ok, listing))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numpy as np

from featstore.errors import StoreError
from featstore.provenance import (
    AUGMENTED,
    refuse_changed_listing,
    refuse_other_augmentation,
    validate_extractor,
)
from featstore.store.attr_values import bounded_attrs, read_attr, read_names
from featstore.store.layout import (
    hard_group,
    hard_groups,
    listing_columns,
    read_commit,
    read_paths,
    split_summary,
    validate_augmented,
    validate_labels,
    validate_split,
)


@dataclass(frozen=True)
class Survey:
    """What a store holds of one split key for the groups a pass would write."""

    todo: list[str]  # groups that still need the split key, in the order asked
    interrupted: bool  # one of them holds a partial split with committed rows: resume from a compacted copy
    done: int  # images every group in todo holds already (0 with overwrite, or when one has none)
    summary: dict | None = None  # the first group's split summary (plus extractor_fingerprint) when todo is empty
    discarded: int = 0  # with overwrite: images an interrupted run had committed, which a resume would have kept
    stored: tuple = ()  # with overwrite: the attributes of each partial split, for whether a resume would have run
    fixed: bool | str = False  # with overwrite: a resume would be refused (cannot grow; str: the reason)


def survey(
    f: h5py.File | None, path, names: list[str], key: str, done: Callable[[h5py.File, str], bool], overwrite=False
) -> Survey:
    """Which of ``names`` still need ``key`` (``done(f, name)`` False, or ``overwrite``), in the open file ``f`` (None:
    no store yet). The caller has refused a store with links out of it already."""
    if f is None:
        return Survey(list(names), False, 0)
    todo = [n for n in names if overwrite or not done(f, n)]
    if not todo:
        attrs, sg = bounded_attrs(f[names[0]], f"{path}:{f[names[0]].name}"), f[names[0]][key]
        validate_extractor(attrs, f"{path}:/{names[0]}")
        summary = split_summary(sg, validate_split(sg, f"{path}:/{names[0]}/{key}", attrs))
        return Survey([], False, 0, {**summary, "extractor_fingerprint": attrs["fingerprint"]})
    partial = [_partial(f, path, n, key, resumed=not overwrite) for n in todo]
    held = 0 if overwrite else min(c.images_done if c else 0 for c in partial)
    lost = min(c.images_done if c else 0 for c in partial) if overwrite else 0  # what a resume starts after
    groups = [f[n][key] for n, c in zip(todo, partial) if c is not None and lost]
    try:
        stored, fixed = tuple(bounded_attrs(sg, f"{path}:{sg.name}") for sg in groups), _fixed(groups, path)
    except StoreError:  # an attribute a resume refuses (crafted, damaged): --overwrite replaces it, as advised
        stored, fixed = (), "its attributes are damaged"
    return Survey(todo, any(c is not None for c in partial), held, discarded=lost, stored=stored, fixed=fixed)


def _fixed(groups: list[h5py.Group], path) -> bool:
    """Whether a resume would refuse one of these partial splits as unable to grow (:func:`_refuse_fixed_size`)."""
    try:
        for sg in groups:
            _refuse_fixed_size(sg, f"{path}:{sg.name}")
    except StoreError:
        return True
    return False


def _partial(f: h5py.File, path, name: str, key: str, resumed: bool):
    """The commit of a partial ``key`` of group ``name`` with committed state, else None; when it is to be
    ``resumed``, refused unless every dataset a resume appends to can grow.

    Only hard-linked groups are visited. A damaged split is left to the writer's check, which names the problem, and one
    whose creation was interrupted (no commit yet) is simply started again.
    """
    sg = hard_group(f, f"{name}/{key}")
    if sg is None:
        return None
    complete = read_attr(sg, "complete", f"{path}:/{name}/{key}", most=16, default=None)
    if isinstance(complete, bool) and not complete and "commit" in sg.attrs:
        commit = validate_split(sg, f"{path}:/{name}/{key}")
        if resumed:
            _refuse_fixed_size(sg, f"{path}:/{name}/{key}")
        return commit
    return None


def _refuse_fixed_size(sg: h5py.Group, where: str) -> None:
    """Refuse, before any work, resuming a split one of whose row datasets cannot grow (contiguous, or chunked with a
    fixed largest size, as a repack or another tool leaves it): the resume's first append ended in a 59-line traceback
    after the compaction and the model's build, and every later resume again (attack 29 #9)."""
    for key in ("features", "labels", "paths", "failed/paths", "failed/reasons"):
        ds = sg.get(key)
        if isinstance(ds, h5py.Dataset) and (ds.chunks is None or ds.maxshape[0] is not None):
            how = "contiguous" if ds.chunks is None else f"with a largest size of {ds.maxshape[0]:,} rows"
            raise StoreError(
                f"{where}/{key} is stored {how} (as a repack or another tool rewrites it), so this interrupted split "
                f"cannot grow as a resume appends its rows: re-extract this split with --overwrite (or into a new "
                f"--store)"
            )


def split_done(f: h5py.File, path, name: str, split: str, matches: Callable[[dict], bool], listing) -> bool:
    """True when the split is complete, made by an extractor whose attributes ``matches`` accepts, from these images
    (no model needed to tell). A complete split whose images changed since is refused with a summary of the change."""
    where = f"{path}:/{name}/{split}"
    complete = read_attr(f[name][split], "complete", where, 16, None) if name in f and split in f[name] else None
    if not isinstance(complete, bool) or not complete:
        return False  # not there, not complete, or damaged: the writer's full check says which
    attrs = bounded_attrs(f[name], f"{path}:{f[name].name}")
    if not matches(attrs):
        return False
    validate_extractor(attrs, f"{path}:/{name}")  # damaged provenance is named, never taken as done
    sg = f[name][split]
    commit = validate_split(sg, where, attrs)  # a damaged split is named, not skipped
    validate_labels(sg["labels"][: commit.rows], len(read_names(sg, "class_names", where)), where)
    digest = read_attr(sg, "listing_sha256", where, most=1, default=None)
    refuse_changed_listing(digest, listing, lambda: listing_columns(sg), split, name, path)
    return True


def copies_done(f: h5py.File, path, name: str, split: str, want: dict) -> bool:
    """True when the split's augmented copies are there and complete; copies made otherwise (count, spec, seed, plain
    split: ``want``, their attributes) are refused, both sides shown."""
    sg = f[name][split]
    if AUGMENTED not in hard_groups(sg) or "commit" not in sg[AUGMENTED].attrs:
        return False  # none yet, or a run killed while creating them: started again
    ag = sg[AUGMENTED]
    refuse_other_augmentation(bounded_attrs(ag, f"{path}:{ag.name}"), want, split, name, path)
    where = f"{path}:/{name}/{split}/{AUGMENTED}"
    commit = validate_augmented(
        ag, where, bounded_attrs(f[name], f"{path}:{f[name].name}"), read_commit(sg, f"{path}:/{name}/{split}")
    )
    return bool(read_attr(ag, "complete", where, most=1)) and commit.images_done == want["n_images"]


def committed_rows(f: h5py.File, path, name: str, split: str) -> tuple[list[str], np.ndarray, dict]:
    """A split's committed rows: their stored paths, labels (int32), and the split's attributes."""
    sg = f[name][split]
    n = validate_split(sg, f"{path}:/{name}/{split}").rows
    return read_paths(sg["paths"], n), sg["labels"][:n].astype(np.int32), bounded_attrs(sg, f"{path}:{sg.name}")

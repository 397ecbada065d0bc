"""The store's HDF5 layout: a split's datasets and attributes, its commit, its augmented copies, checked cheaply.

Every reader and the writer validate a split through here before trusting it (no feature is read): a damaged or
crafted split is refused with what is wrong and the fix. Links are inspected here, never followed. Everything in this
module works on an HDF5 object that is already open; opening the file is :mod:`featstore.store.locking`'s. What the
features *are* (provenance, fingerprint) is :mod:`featstore.provenance`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.images.listing_diff import ListingColumns
from featstore.provenance import MAX_AUGMENT_COPIES, check_format_version, plain
from featstore.store.attr_values import bounded_attrs, read_attr, read_names, refuse_many_attrs
from featstore.store.names import path_text, refuse_listings, refuse_odd, refuse_odd_names
from featstore.store.pathcols import PATH_ERRORS, path_block_rows, read_paths  # noqa: F401 (re-exported: readers)
from featstore.store.storage import refuse_missing_chunks, refuse_split_columns
from featstore.store.strings import MAX_PATH_BYTES, repeated, shown

STR = h5py.string_dtype("utf-8")


def string_problem(ds) -> str | None:
    """Why ``ds`` is not a 1-D dataset of HDF5 strings featstore reads (None when it is): an object dtype that is not
    an HDF5 string (vlen integers, references) or a fixed-length width over MAX_PATH_BYTES. Checked before any read."""
    if ds.ndim != 1 or h5py.check_string_dtype(ds.dtype) is None:
        return f"has dtype {ds.dtype} and {ds.ndim} dimensions, expected 1-D HDF5 strings"
    if ds.dtype.kind == "S" and ds.dtype.itemsize > MAX_PATH_BYTES:
        return f"holds fixed-length strings of {ds.dtype.itemsize} bytes each, over the {MAX_PATH_BYTES}-byte limit"
    return None


def same_split(f: h5py.File, key: str, seen: tuple | None, where: str) -> tuple:
    """The version of the split at ``key`` (its id, start and finish times, commit), refused when it is not ``seen``,
    the one an earlier block of the same read came from: a reader opens the file per block, and a split replaced
    meanwhile (``extract --overwrite`` in another process) gave half old, half new rows without a word."""
    sg = f.get(key, getlink=True)
    sg = f[key] if isinstance(sg, h5py.HardLink) and isinstance(f[key], h5py.Group) else None
    names = ("split_id", "started_at", "finished_at", "commit")
    version = ("gone",) if sg is None else tuple(str(read_attr(sg, k, where, 3, None)) for k in names)
    if seen is not None and version != seen:
        raise StoreError(
            f"{where} was replaced while it was being read (re-extracted by another process?): its rows would mix two "
            f"versions of the split. Run the command again once that extraction has finished"
        )
    return version


@dataclass(frozen=True)
class Commit:
    """A split's committed state: its one ``commit`` attribute, validated against the datasets."""

    rows: int  # rows of features/labels/paths that are valid
    failed: int  # failure records that are valid
    images_done: int  # images handled so far (rows + failed)


def read_commit(sg, where: str) -> Commit:
    """The split's validated ``commit`` attribute; StoreError naming the problem for a damaged or crafted one.

    A split whose creation was interrupted has no ``commit`` yet: that reads as nothing committed.
    """
    if "commit" not in sg.attrs:
        return Commit(0, 0, 0)
    value = read_attr(sg, "commit", where, most=16)  # measured and bounded: it goes into the message below
    raw = np.asarray(value if isinstance(value, list) and all(type(v) is int for v in value) else [value])
    if raw.shape != (3,) or raw.dtype.kind not in "iu":
        raise StoreError(
            f"{where}: attribute commit is {shown(str(value), 60)}, expected three integers [rows, failed, images_done]: "
            f"the store is damaged. Re-extract this split with --overwrite."
        )
    rows, failed, done = (int(v) for v in raw)
    if min(rows, failed, done) < 0 or done != rows + failed:
        raise StoreError(
            f"{where}: commit [{rows}, {failed}, {done}] is inconsistent (negative, or images_done != rows + failed): "
            f"the store is damaged. Re-extract this split with --overwrite."
        )
    for key in ROW_DATASETS:  # hard-linked datasets only: a link is never followed here (validate_split names it)
        if (
            isinstance(sg.get(key, getlink=True), h5py.HardLink)
            and isinstance(sg[key], h5py.Dataset)
            and rows > sg[key].shape[0]
        ):
            raise StoreError(
                f"{where}: commit says {rows} rows but {key} holds {sg[key].shape[0]}: rows were lost. "
                f"Re-extract this split with --overwrite."
            )
    if "failed" in sg and "paths" in sg["failed"] and failed > sg["failed"]["paths"].shape[0]:
        raise StoreError(
            f"{where}: commit says {failed} failure records but failed/paths holds {sg['failed']['paths'].shape[0]}. "
            f"Re-extract this split with --overwrite."
        )
    n_images = read_attr(sg, "n_images", where, most=1, default=None)
    if isinstance(n_images, (int, float)) and done > n_images:
        raise StoreError(
            f"{where}: commit says {done} images done of n_images {n_images}: the store is damaged. "
            f"Re-extract this split with --overwrite."
        )
    return Commit(rows, failed, done)


SPLIT_DATASETS = ("features", "labels", "paths", "failed/paths", "failed/reasons")
ROW_DATASETS = ("features", "labels", "paths", "copy")  # one entry per committed row ("copy": augmented copies only)
SPLIT_ATTRS = ("class_names", "commit", "n_images", "complete", "source_root")


def validate_split(sg, where: str, extractor: dict | None = None) -> Commit:
    """Validate a split's layout, attribute types and dataset kinds cheaply (no feature reads); returns its commit.

    Raises StoreError with what is wrong and the fix. ``extractor`` (the extractor's attributes) adds the
    shape/dtype check against its recorded feature_shape and dtype.
    """
    redo = "Re-extract this split with --overwrite (or into a new --store)."
    for key in SPLIT_DATASETS:
        obj = sg
        for part in key.split("/"):  # every component a hard link: an external link is never opened on the way
            link = obj.get(part, getlink=True) if isinstance(obj, h5py.Group) else None
            if link is None:
                raise StoreError(f"{where}: dataset {key} is missing. {redo}")
            if not isinstance(link, h5py.HardLink):
                raise StoreError(f"{where}/{key} is not stored in this file ({type(link).__name__}). {redo}")
            obj = obj[part]
        if not isinstance(obj, h5py.Dataset) or obj.is_virtual or obj.external:
            raise StoreError(
                f"{where}/{key} is not a dataset stored in this file (a group, virtual or external dataset). {redo}"
            )
    missing = [k for k in SPLIT_ATTRS if k not in sg.attrs and not (k == "commit")]
    if missing:
        raise StoreError(f"{where}: attributes missing: {', '.join(missing)}. {redo}")
    feats, labels = sg["features"], sg["labels"]
    if feats.dtype.kind != "f":
        raise StoreError(f"{where}/features has dtype {feats.dtype}, not floating point. {redo}")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise StoreError(
            f"{where}/labels has dtype {labels.dtype} and {labels.ndim} dimensions, expected 1-D integers. {redo}"
        )
    for key in ("paths", "failed/paths", "failed/reasons"):
        if problem := string_problem(sg[key]):
            raise StoreError(f"{where}/{key} {problem}: the store is damaged or crafted. {redo}")
    if extractor is not None:
        shape = plain(extractor.get("feature_shape", []))
        if not isinstance(shape, list) or not all(isinstance(v, int) for v in shape):
            raise StoreError(
                f"{where}: the extractor's feature_shape is {shape!r}, expected a list of positive integers. {redo}"
            )
        want = shape
        if list(feats.shape[1:]) != want or str(feats.dtype) != extractor.get("dtype"):
            raise StoreError(
                f"{where}/features are {tuple(feats.shape[1:])} {feats.dtype}, the extractor records "
                f"{tuple(want)} {extractor.get('dtype')}. {redo}"
            )
    classes = read_names(sg, "class_names", where)  # bounded: count and length, before any comparison
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise StoreError(f"{where}: class_names is {shown(str(classes))}, expected a list of names. {redo}")
    twice = repeated(classes)
    if twice or "" in classes:  # labels of two classes would read as one name: predictions and figures mislabelled
        named = f"repeat [{', '.join(shown(c) for c in twice[:5])}{', ...' if len(twice) > 5 else ''}]"
        raise StoreError(
            f"{where}: class_names {named if twice else 'hold an empty name'}; every class needs its own name. {redo}"
        )
    value = read_attr(sg, "n_images", where, most=16)  # measured, a few items at most, before it is read or shown
    try:
        n_images = int(value)
    except (TypeError, ValueError, OverflowError):
        n_images = -1
    complete = read_attr(sg, "complete", where, most=16)
    if not isinstance(complete, (bool, int)) or int(complete) not in (0, 1):
        raise StoreError(f"{where}: attribute complete is {shown(str(complete), 60)}, expected true or false. {redo}")
    if n_images < 0:
        raise StoreError(f"{where}: n_images is {shown(str(value), 60)}, expected a count. {redo}")
    commit = read_commit(sg, where)  # a commit past n_images is named as such, before the listing's length
    _validate_listing(sg, where, redo, n_images)
    return commit


MAX_PACKED_CHUNK = 64 << 20  # bytes: a compressed chunk is unpacked whole to read any of its rows


def check_chunks(sg, commit: Commit, where: str) -> None:
    """Refuse a split whose storage no reader can be trusted with, from HDF5's bookkeeping alone (no row is read): a
    compressed row dataset whose one chunk unpacks to more than 64 MiB and more than its committed rows take (a crafted
    store of a few MB, a gzip chunk of zeros, would make every reader allocate up to 4 GiB per dataset); features chunked
    across their values; committed rows whose chunks were never written (:mod:`featstore.store.storage`). Call it before
    reading rows: every reader does, and a resume's compaction before it copies a split (it copied lost chunks as
    rows of zeros, which every check then accepted, and unpacked a 1 GiB chunk whole: attack 29 #3, #5)
    """
    for key in (*ROW_DATASETS, "failed/paths", "failed/reasons"):
        ds = sg.get(key)
        if not isinstance(ds, h5py.Dataset):
            continue
        rows = commit.failed if key.startswith("failed/") else commit.rows
        if key == "features":
            refuse_split_columns(ds, where)
        refuse_missing_chunks(ds, rows, f"{where}/{key}")
        if ds.chunks is None or ds.id.get_create_plist().get_nfilters() == 0:
            continue
        row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        chunk = int(np.prod(ds.chunks, dtype=np.int64)) * ds.dtype.itemsize
        if rows and chunk > max(MAX_PACKED_CHUNK, rows * row_bytes):
            raise StoreError(
                f"{where}/{key}: one compressed chunk unpacks to {chunk / 2**20:,.0f} MiB for {rows} committed rows "
                f"({rows * row_bytes / 2**20:,.1f} MiB): reading it would allocate all of it (a damaged or crafted "
                f"store). Re-extract this split with --overwrite (and a --batch-size whose batch is smaller)."
            )


AUGMENT_ATTRS = ("augment_copies", "augment_spec", "augment_seed", "source_rows", "source_split")


def validate_augmented(ag, where: str, extractor: dict | None, source: Commit) -> Commit:
    """Validate a split's augmented copies (layout as a split, plus ``copy`` and their attributes) against the plain split's commit."""
    commit = validate_split(ag, where, extractor)
    redo = "Make them again: re-run the extract with --augment and --overwrite."
    missing = [k for k in AUGMENT_ATTRS if k not in ag.attrs]
    if missing:
        raise StoreError(f"{where}: attributes missing: {', '.join(missing)}. {redo}")
    a = {k: read_attr(ag, k, where, most=1) for k in AUGMENT_ATTRS}  # one item each: shown cut below all the same
    ints = [a[k] for k in ("augment_copies", "augment_seed", "source_rows")]
    if (
        not all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
        or a["augment_copies"] < 1
        or a["source_rows"] < 0
        or not isinstance(a["augment_spec"], str)
        or not isinstance(a["source_split"], str)
    ):
        raise StoreError(
            f"{where}: augment_copies {shown(str(a['augment_copies']))}, augment_seed {shown(str(a['augment_seed']))}, "
            f"source_rows {shown(str(a['source_rows']))} or augment_spec {shown(str(a['augment_spec']))} is not what "
            f"featstore writes. {redo}"
        )
    link = ag.get("copy", getlink=True)
    ds = ag["copy"] if isinstance(link, h5py.HardLink) else None
    if not isinstance(ds, h5py.Dataset) or ds.is_virtual or ds.external or ds.dtype.kind not in "iu" or ds.ndim != 1:
        raise StoreError(f"{where}/copy is missing or not a 1-D integer dataset stored in this file. {redo}")
    n_images = read_attr(ag, "n_images", where, most=1)  # a count: validate_split read it so
    if a["source_rows"] != source.rows or n_images != a["augment_copies"] * a["source_rows"]:
        raise StoreError(
            f"{where}: the copies were made from {a['source_rows']} rows of the split ({n_images} "
            f"images for {a['augment_copies']} copies), the split holds {source.rows} rows now. {redo}"
        )
    # the attributes must describe copies featstore could have made of this very split (a crafted or stale group lies here)
    parent = ag.parent
    lies = []
    if a["augment_copies"] > MAX_AUGMENT_COPIES:
        lies.append(f"augment_copies {a['augment_copies']} is over {MAX_AUGMENT_COPIES}")
    if not 0 <= a["augment_seed"] < 2**31:
        lies.append(f"augment_seed {a['augment_seed']} is not in 0..{2**31 - 1}")
    try:
        from featstore.images.augment import parse_augment

        if not parse_augment(a["augment_spec"]):
            lies.append("augment_spec is empty")
    except ConfigError as exc:
        lies.append(f"augment_spec {shown(a['augment_spec'])} is not a spec featstore reads ({exc})")
    if a["source_split"] != parent.name.rsplit("/", 1)[-1]:
        lies.append(
            f"source_split {shown(a['source_split'])} is not the split {parent.name.rsplit('/', 1)[-1]!r} that holds them"
        )
    for key in ("class_names", "listing_sha256"):  # the copies' class_names are bounded above; the split's on its own
        mine, theirs = (read_names(g, key, where) if key in g.attrs else None for g in (ag, parent))
        if mine != theirs:
            lies.append(f"{key} {shown(str(mine), 60)} differs from the split's {shown(str(theirs), 60)}")
    if bool(read_attr(ag, "complete", where, most=1)) and commit.images_done != a["augment_copies"] * a["source_rows"]:
        lies.append(f"marked complete with {commit.images_done} of {a['augment_copies'] * a['source_rows']} rows done")
    if lies:
        raise StoreError(f"{where}: these copies do not match the split they belong to: {'; '.join(lies)}. {redo}")
    return commit


LISTING = ("paths", "labels", "sizes", "mtimes_ns")  # /<split>/listing: every image of the split as discovered


def _validate_listing(sg, where: str, redo: str, n_images: int) -> None:
    """The split's recorded listing, if any, is a group of four hard-linked 1-D datasets of one length and the right
    kinds, one row per image of the split (``n_images``), no more rows than the file has bytes: checked before a row is
    read, so a crafted length is refused in one line instead of read."""
    link = sg.get("listing", getlink=True)
    if link is None:
        return
    lg = sg["listing"] if isinstance(link, h5py.HardLink) else None
    if not isinstance(lg, h5py.Group) or any(not isinstance(lg.get(k, getlink=True), h5py.HardLink) for k in LISTING):
        raise StoreError(f"{where}/listing is damaged (missing or linked datasets). {redo}")
    if problem := string_problem(lg["paths"]):
        raise StoreError(f"{where}/listing/paths {problem}: the store is damaged or crafted. {redo}")
    n = lg["paths"].shape
    kinds = [lg[k].dtype.kind in "iu" for k in LISTING[1:]]
    if not all(kinds) or len(n) != 1 or any(lg[k].shape != n for k in LISTING):
        raise StoreError(f"{where}/listing is damaged (datasets of the wrong kind or length). {redo}")
    try:
        size = os.path.getsize(sg.file.filename)
    except OSError:  # a file opened from memory or a file object: only n_images bounds it
        size = None
    if n[0] != n_images or (size is not None and n[0] > size):
        raise StoreError(
            f"{where}/listing records {n[0]} images but the split has n_images {n_images}"
            + (f" and the file {size} bytes" if size is not None and n[0] > size else "")
            + f": the store is damaged. {redo}"
        )


def validate_labels(y: np.ndarray, n_classes: int, where: str) -> None:
    """Refuse labels outside 0..n_classes-1 (a damaged or crafted store)."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise StoreError(
            f"{where}/labels hold values outside 0..{n_classes - 1} (found {int(y.min())}..{int(y.max())}): "
            f"the store is damaged. Re-extract this split with --overwrite."
        )


def hard_groups(g: h5py.Group) -> list[str]:
    """Names of the sub-groups of ``g`` reached through hard links (links are not followed); StoreError for a name
    featstore never writes (``names.odd_name``: over 255 bytes, a control character, a line break), never printed, and
    for a group HDF5 cannot be trusted to list (``names.refuse_listings``), before it is listed."""
    refuse_listings(g, g.file.filename, deep=False)
    names = sorted(k for k in g if isinstance(g.get(k, getlink=True), h5py.HardLink) and isinstance(g[k], h5py.Group))
    refuse_odd(g, names)
    return names


def group_names(store) -> set[str]:
    """The extractor groups of ``store`` (a :class:`~featstore.store.locking.StoreFile`) now: empty when there is no
    store yet or it cannot be read (the checks that open it later say why). What ``validate_name`` calls known."""
    try:
        with store.read_if_exists() as f:
            return set() if f is None else set(hard_groups(f))
    except (OSError, StoreError, ValueError, KeyError, RuntimeError):
        return set()


def hard_group(f: h5py.Group, path: str) -> h5py.Group | None:
    """The group at ``path`` ('a/b/c') if every step is a hard-linked group, else None (links are never followed)."""
    g = f
    for part in path.split("/"):
        if part not in hard_groups(g):
            return None
        g = g[part]
    return g


def foreign_objects(f: h5py.File, under: str | None = None) -> list[str]:
    """Names of external/soft links, virtual datasets and externally stored datasets: ways to reach outside the file
    (``under``: those below that hard-linked group only, as ``check`` walks an extractor whose neighbour is damaged).

    Links are inspected, never followed (a dangling or external link is reported, not opened).
    """
    found: list[str] = []
    g, prefix = (f, "/") if under is None else (f[under], f"/{under}/")
    refuse_listings(g, f.filename)  # before HDF5 lists a group whose listing repeats (StoreError)

    def visit(name, link):
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            found.append(f"{prefix}{path_text(name)} ({type(link).__name__})")
        elif isinstance(link, h5py.HardLink):
            obj = g.get(name)
            if isinstance(obj, h5py.Dataset) and (obj.is_virtual or obj.external):
                what = "virtual dataset" if obj.is_virtual else "external storage"
                found.append(f"{prefix}{path_text(name)} ({what})")

    try:
        g.visititems_links(visit)
    except (SystemError, UnicodeDecodeError) as exc:  # h5py cannot decode an object name: featstore never writes one
        cause = (
            exc.__cause__ or exc.__context__ or exc
        )  # h5py's SystemError wraps the decode error (its text: an address)
        why = str(cause)[:120] if isinstance(cause, UnicodeDecodeError) else "its bytes are not UTF-8"
        raise StoreError(
            f"{f.filename} holds an object whose name is not UTF-8 ({why}); it was not written by featstore. "
            f"Refusing to use it."
        ) from None
    return found


def refuse_foreign(f: h5py.File, path, allow: bool = False) -> None:
    """Raise unless the file is self-contained (or ``allow``): links out of a store could read or write other files;
    and, whatever ``allow``, for an object name featstore never writes (``names.refuse_odd_names``)."""
    refuse_odd_names(f, path)
    if allow:
        return
    found = foreign_objects(f)
    if found:
        raise StoreError(
            f"store {path} holds objects that point outside it: {', '.join(found[:5])}. featstore never writes "
            f"these; refusing to use it. If you made them on purpose, pass allow_external=True."
        )


def check_root(f: h5py.File, path) -> bool:
    """Before a write: refuse a file with links out of it, an HDF5 file that is not a featstore store, or a store of a
    format this featstore does not write. False for an empty HDF5 file (a store to start), True for a store."""
    refuse_foreign(f, path)
    if len(f) or h5py.h5o.get_info(f.id).num_attrs:  # not a file just made: counted as info and check count it
        refuse_many_attrs(f, f"{path}:/")  # (a new one is not flushed early for that: its layout stays as it was)
    if "format_version" not in f.attrs:
        if len(f):
            raise StoreError(
                f"{path} is an HDF5 file without featstore's format_version: not a featstore store. "
                f"Choose another --store (nothing was written)."
            )
        return False
    check_format_version(read_attr(f, "format_version", f"{path}:/"), path)
    return True


def split_summary(sg: h5py.Group, commit: Commit) -> dict:
    """A split's attributes plus its features' shape, dtype and chunk shape, and its commit spelled out."""
    feats = sg["features"]
    return {
        **bounded_attrs(sg, f"{sg.file.filename}:{sg.name}"),
        "committed_rows": commit.rows,
        "n_failed": commit.failed,
        "images_done": commit.images_done,
        "shape": list(feats.shape),
        "dtype": str(feats.dtype),
        "chunks": list(feats.chunks or []),
    }


def stored_listing(sg: h5py.Group) -> list[tuple[str, int, int, int]]:
    """The (path, label, size, mtime_ns) entries recorded when the split was started ([] for a split without them): one
    tuple per row, for small listings and the public API; commands compare with :func:`listing_columns` (blocks).

    The listing's layout is checked by :func:`validate_split`, which every caller runs first.
    """
    cols = listing_columns(sg)
    return [row for _, paths, nums in cols.blocks() for row in zip(paths, *nums.tolist())]


def listing_columns(sg: h5py.Group) -> ListingColumns:
    """The split's recorded listing read ``BLOCK`` rows at a time while ``sg``'s file is open (none recorded: 0 rows).

    Its length was checked against the split's ``n_images`` and the file's size by :func:`validate_split`.
    """
    if "listing" not in sg:
        return ListingColumns(0, lambda a, b: ([], np.zeros((3, 0), np.int64)))
    lg = sg["listing"]
    return ListingColumns(
        lg["paths"].shape[0],
        lambda a, b: (read_paths(lg["paths"], b, a), np.stack([lg[k][a:b].astype(np.int64) for k in LISTING[1:]])),
    )

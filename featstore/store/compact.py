"""Rewriting a store into a fresh file that holds only committed rows: how every resume starts.

A writer killed at any point can leave HDF5 metadata and free-space state that the next writer must not
build on; :func:`compact` copies every split (and its augmented copies) up to its ``commit`` into a new file, in a
folder of its own beside the store, and renames it into place through folder descriptors (:mod:`featstore.renames`).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
from pathlib import Path

import h5py

from featstore import sticky
from featstore.carry import own_permissions as _own_permissions  # the store's mode and group: attack 23 #14
from featstore.carry import own_xattrs, say_group
from featstore.carry import shared_xattrs as _shared_xattrs
from featstore.errors import StoreError
from featstore.provenance import AUGMENTED
from featstore.renames import PrivateFolder, same_file
from featstore.store.attr_values import raw_attr, refuse_many_attrs
from featstore.store.layout import LISTING, ROW_DATASETS, check_chunks, hard_groups, read_commit
from featstore.store.links import check_opened, same
from featstore.store.locking import DENSE_ATTRS_LIBVER, StoreFile
from featstore.store.names import names_text, path_text
from featstore.store.space import compact_temporary, ensure_space, remove_compactions
from featstore.store.strings import refuse_long
from featstore.units import format_bytes

logger = logging.getLogger(__name__)


def compact(store: StoreFile | str | os.PathLike, leave_out: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Rewrite the store into a fresh file holding only committed rows and records, then put it in place.
    ``leave_out``: ``(extractor, split)`` pairs not copied (an interrupted split that ``--overwrite`` replaces: its
    crafted attribute refused the copy, with the advice to re-extract it with ``--overwrite``: attack 26 #1).

    A writer killed at any point (mid-batch, or while closing the file) can leave HDF5 metadata and free-space
    state past the end-of-allocation mark that was last flushed; the next writer's frees or allocations then
    fail with "len not positive after adjustment for EOA", sometimes only at a later write. A fresh file
    written from the committed data has consistent metadata; it costs one copy of the store per resume. Example::

        compact(StoreFile("features.h5"))
    """
    store = store if isinstance(store, StoreFile) else StoreFile(store)
    with store.open("r") as src:  # through this user's own links only, the very file the name reaches (attack 28 #3)
        source = os.dup(src.id.get_vfd_handle())  # the file read, held until the copy is renamed onto its name
        try:
            _compact(store, src, source, leave_out)
        finally:
            os.close(source)


def _compact(store: StoreFile, src: h5py.File, source: int, leave_out: frozenset[tuple[str, str]]) -> None:
    """:func:`compact` of ``src``, the store file open at ``source`` too, which the store's name still reaches; ``src``
    is closed before its copy is renamed onto its name."""
    before = os.fstat(source)
    # A store reached through this user's own symbolic link is rewritten where the link points: replacing the link
    # itself would leave the real store behind with its uncommitted tail and every later write in a copy beside it.
    path = Path(check_opened(store.path, before, wrote=True))
    if store.checked is not None and not same(store.checked, before):
        raise _not_locked(path)  # another file than the one the writer's lock checked: none of this run's
    shared = _shared_xattrs(source)
    _fresh_temporary(path)  # first: a killed compaction's leftover must not count against the room for its copy
    remove_compactions(path)
    ensure_space(path, before.st_size)
    # written in a folder of its own (0700), renamed through descriptors: in a folder others can write, nothing they
    # rename there replaces the store (attack 23)
    theirs = sticky.ahead(path)  # a colleague's store in a sticky folder: only they may put the copy in its place
    if theirs is not None:
        raise _theirs(path, theirs)
    private, held = PrivateFolder(path, lambda removed: _swapped(path), compact=True), -1
    try:
        private.make()
    except OSError as exc:
        raise _cannot_rewrite(exc, path) from None
    try:
        with private:
            _refuse_left_behind(src, path, leave_out)
            kwargs = store.h5py_kwargs() | ({"libver": DENSE_ATTRS_LIBVER} if _large_attrs(src) else {})
            with h5py.File(private.path(), "w-", **kwargs) as dst:
                held = os.dup(dst.id.get_vfd_handle())  # the file h5py made (O_EXCL), held until it is renamed
                _copy_attrs(src, dst)
                for name in hard_groups(src):
                    g = dst.create_group(name)
                    _copy_attrs(src[name], g)
                    for split in (s for s in hard_groups(src[name]) if (name, s) not in leave_out):
                        _copy_split(src[name][split], g, split, f"{path}:/{name}/{split}")
                dst.flush()
            src.close()  # (h5py: closing again when the opening ends is a no-op)
            _own_permissions(held, before, 0o7777 if before.st_uid == os.geteuid() else 0o3775)  # no o+w (38 #11)
            _own_xattrs(held, shared, path, before)
            # renamed onto the name only while it is still the file read (a colleague's link put there since: refused)
            at = private.parent_fd if private.parent_fd >= 0 else None
            if same_file(source, path.name if at is not None else path, at) is None:
                raise _not_locked(path)
            private.put(held)  # renamed only while it is the file h5py made (:func:`featstore.renames.same_file`)
            if store.checked is not None:
                store.checked = os.fstat(held)  # the store the lock holds now
    except (OSError, RuntimeError) as exc:
        # the sticky bit refusing the rename (root checked ahead): its EPERM names the temporary relative to the
        # folder's descriptor, which the CLI read as a file of the current folder (attack 36 #9)
        if (theirs := sticky.refused(exc, path)) is not None:
            raise _theirs(path, theirs) from None
        if _disk_full(exc):
            raise StoreError(
                f"the disk filled while store {path} was rewritten (a copy of it, beside it in {path.parent}); the "
                f"store is unchanged. Free some space (the copy needs about {format_bytes(before.st_size)}), then "
                f"re-run the same command"
            ) from None
        raise
    finally:
        if held >= 0:
            os.close(held)
    logger.info("rewrote %s without the uncommitted tail an interrupted run left", path)


def _theirs(path: Path, theirs: sticky.Sticky) -> StoreError:
    """Resuming a colleague's store in a sticky folder: its EPERM was said as "you may not make files in" the user's
    current folder, and nothing said who can resume it (attack 36 #9)."""
    return StoreError(
        f"cannot resume store {path}: "
        + theirs.line(
            "resuming rewrites it as a new file (its committed rows copied) put in its place, which only they may do; "
            f"it was not started. Ask {theirs.owner} to run the same command, or copy the store into a folder of yours "
            "and pass that --store"
        )
    )


def _not_locked(path: Path) -> StoreError:
    """The line for a store name that no longer leads to the file this run checked, locked and read."""
    return StoreError(
        f"store {path} was replaced by another file during this run (someone else can rename entries in "
        f"{path.parent}); it was not rewritten. Keep stores in a folder only you can write, then re-run the same command"
    )


def _own_xattrs(fd: int, shared: dict[str, bytes], path: Path, before: os.stat_result) -> None:
    """The store's access control list and user attributes onto the copy, through its descriptor
    (:func:`featstore.carry.own_xattrs`): a resume dropped a colleague's `setfacl -m u:bob:rw` grant (and made the
    group, which the ACL held to read-only, read-write: the mode's group bits were the ACL's mask; attack 26 #14). One
    that cannot be set stops the rewrite with the store unchanged; a group that could not be given is said."""

    def refused(name: str, exc: OSError) -> StoreError:
        return StoreError(
            f"store {path} carries the extended attribute {name} (an access control list: setfacl), which its "
            f"rewrite beside it cannot take ({exc.strerror}); the store was not changed. Resume a copy of it "
            f"(cp -a keeps the ACL where the target supports it), or remove the ACL (setfacl -b) and run again"
        )

    own_xattrs(fd, shared, before, refused)
    say_group(fd, before, f"store {path}", str(path))


def _swapped(path: Path) -> StoreError:
    """The line for a copy (or its folder) that is not the one featstore wrote when the compaction ends."""
    return StoreError(
        f"the copy featstore just wrote to rewrite store {path} in {path.parent} was replaced by another file, or its "
        f"folder could not be made safely: someone else can write {path.parent}. The store was not changed. Keep "
        f"stores in a folder only you can write, then re-run the same command"
    )


def _cannot_rewrite(exc: OSError, path: Path) -> StoreError:
    """One line, before any copy work, for a folder beside the store where its copy cannot be made."""
    if _disk_full(exc):
        return StoreError(
            f"no room to rewrite store {path} beside it, in {path.parent} (the disk is full); the store is unchanged. "
            f"Free some space, then re-run the same command"
        )
    why = "which you cannot write" if exc.errno in (errno.EACCES, errno.EPERM) else f"where {exc.strerror or exc}"
    if exc.errno == errno.EROFS:
        why = "which is on a read-only file system"
    return StoreError(
        f"resuming rewrites store {path} beside it, in {path.parent}, {why}: make the folder writable, or copy the "
        f"store somewhere you can write and resume there"
    )


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or h5py's error out of HDF5, which carries the errno in its text) is a full disk."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(s in text for s in ("errno = 28", f"errno = {errno.EDQUOT}", "No space left", "quota exceeded"))


def _fresh_temporary(path: Path) -> Path:
    """The compaction's temporary name beside ``path``, free: a leftover of a killed compaction (a file) or a link
    planted there is removed (never written through: the copy is then created with O_EXCL); anything else is refused."""
    tmp = compact_temporary(path)
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return tmp
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise StoreError(
            f"{tmp} (where featstore rewrites store {path} after an interrupted run) is not a file featstore made "
            f"(a folder, pipe or device); remove it, then re-run the same command"
        )
    os.unlink(tmp)
    return tmp


# a group's attributes over this many bytes (a string: 8, as numpy sizes it) are copied with HDF5 1.8's formats
DENSE_ATTRS_BYTES = 16 << 10


def _large_attrs(src: h5py.File) -> bool:
    """Whether the root, an extractor or a split of ``src`` holds attributes the earliest HDF5 format cannot (its header
    messages stop at 64 KiB: a split of over ~4,090 class names, 16-byte heap IDs each); the copy is then made with
    :data:`DENSE_ATTRS_LIBVER`, as :meth:`SplitWriter.prepare` made the split. Sized from each attribute's shape and
    type, nothing read."""
    groups = [src] + [src[n] for n in hard_groups(src)]
    groups += [g[s] for g in groups[1:] for s in hard_groups(g)]
    for g in groups:  # counted before HDF5 lists them (20,014 attributes: 9-21 s here, then the refusal; attack 29 #6)
        refuse_many_attrs(g, f"{src.filename}:{g.name} attribute")
    return any(
        sum(math.prod(a.shape or ()) * a.get_type().get_size() for a in map(g.attrs.get_id, g.attrs))
        > DENSE_ATTRS_BYTES
        for g in groups
    )


def _refuse_left_behind(src: h5py.File, path: Path, leave_out: frozenset) -> None:
    """Refuse, before any copy, a store holding objects the copy would not carry (a dataset the user put at the root,
    beside an extractor or in a split; a link): the resume dropped them without a word (attack 26 #13)."""
    dropped: list[str] = []

    def extra(g: h5py.Group, keep) -> None:
        dropped.extend(f"{g.name.rstrip('/')}/{k}" for k in g if not (k in keep and _hard(g, k)))

    extra(src, hard_groups(src))
    for name in hard_groups(src):
        extra(src[name], hard_groups(src[name]))
        for split in (s for s in hard_groups(src[name]) if (name, s) not in leave_out):
            _extra_in_split(src[name][split], extra)
    if dropped:
        raise StoreError(
            f"resuming rewrites store {path} with what featstore wrote in it, and would drop what it did not: "
            f"{names_text([path_text(d) for d in dropped])}; the store was not changed. Copy those objects to another "
            f"file (h5py: Group.copy) and remove them from the store, or extract into a new --store"
        )


def _extra_in_split(sg: h5py.Group, extra) -> None:
    """What a split (or its augmented copies) holds that :func:`_copy_split` does not copy, through ``extra``."""
    extra(sg, {*ROW_DATASETS, "failed", "listing", AUGMENTED})
    if isinstance(sg.get("failed"), h5py.Group):
        extra(sg["failed"], {"paths", "reasons"})
    if isinstance(sg.get("listing"), h5py.Group):
        lg = sg["listing"]
        extra(lg, {k for k in LISTING if isinstance(lg.get(k), h5py.Dataset) and lg[k].ndim == 1})
    if AUGMENTED in hard_groups(sg) and not _linked_back(sg, sg.name.rsplit("/", 1)[-1]):
        _extra_in_split(sg[AUGMENTED], extra)  # (one linked back is refused by the copy, in its own words)


def _linked_back(sg: h5py.Group, split: str) -> bool:
    """Whether ``sg``'s augmented group is one featstore never writes: copies of copies, or the split, its extractor
    or the root linked into itself."""
    aug = sg[AUGMENTED]
    return split == AUGMENTED or aug.id in (sg.id, sg.parent.id, sg.file["/"].id)


def _hard(g: h5py.Group, key: str) -> bool:
    """Whether ``key`` in ``g`` is a hard link (a soft or external link is not copied)."""
    return isinstance(g.get(key, getlink=True), h5py.HardLink)


def _copy_split(sg: h5py.Group, parent: h5py.Group, split: str, where: str) -> None:
    """A split's committed rows, failure records, listing and attributes into ``parent``; its augmented copies likewise."""
    d = parent.create_group(split)
    _copy_attrs(sg, d)
    c = read_commit(sg, where)
    check_chunks(sg, c, where)  # as every reader: lost chunks were copied as zero rows, a 1 GiB chunk unpacked whole
    for key in ROW_DATASETS:
        if key in sg:
            _copy_rows(sg[key], d, key, c.rows)
    fd = d.create_group("failed")
    for key in ("paths", "reasons"):
        _copy_rows(sg["failed"][key], fd, key, c.failed)
    if isinstance(sg.get("listing"), h5py.Group):  # column by column through the measured reads: HDF5's own copy
        src, lg = sg["listing"], d.create_group("listing")  # wrote 800 rows naming one 1 MiB string as 840 MB
        _copy_attrs(src, lg)
        for key in (k for k in LISTING if isinstance(src.get(k), h5py.Dataset) and src[k].ndim == 1):
            _copy_rows(src[key], lg, key, src[key].shape[0])
    if AUGMENTED in hard_groups(sg):
        aug = sg[AUGMENTED]
        if _linked_back(sg, split):
            # featstore's copies never hold copies; a group linked into itself was copied ~1,000 times over (1 GB from a
            # 1 MB store) until Python's recursion limit (attack 26 #6)
            raise StoreError(
                f"{where}/{AUGMENTED} is not a split's augmented copies (copies of copies, or a group linked into itself, "
                f"which featstore never writes): the store is crafted or damaged; the store was not changed. Remove that "
                f"group (h5py: del f['{sg.name}/{AUGMENTED}']) or extract into a new --store"
            )
        _copy_split(aug, d, AUGMENTED, f"{where}/{AUGMENTED}")


def _copy_attrs(src, dst) -> None:
    """Every attribute of ``src`` onto ``dst``, values and types as stored, each measured before it is read (and their
    count before HDF5 lists them: a crafted dense index made that listing take minutes, attack 26 #8)."""
    where = f"{src.file.filename}:{src.name} attribute"
    refuse_many_attrs(src, where)
    for key in src.attrs:
        dst.attrs[key] = raw_attr(src, key, where)


def _copy_rows(ds: h5py.Dataset, group: h5py.Group, key: str, n: int) -> None:
    """The first ``n`` rows of ``ds`` into a new dataset of the same kind (dtype, chunks, compression, maxshape)."""
    new = group.create_dataset_like(key, ds, shape=(n, *ds.shape[1:]))
    step = max(1, (ds.chunks or (1024,))[0]) * 16
    for i in range(0, n, step):
        refuse_long(ds, i, min(i + step, n))  # strings: bounded before they are read (shared heap IDs)
        new[i : min(i + step, n)] = ds[i : min(i + step, n)]

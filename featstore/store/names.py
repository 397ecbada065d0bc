"""Object names featstore never writes in a store, found before any is printed (attack 25 #8, #9).

A store's group names are its extractor and split names: they reach ``info``'s tree and every message that names an
extractor or a split, straight from h5py's listing. featstore writes plain ASCII names of at most 200 characters
(``provenance.validate_name``), so a name over what a ``--name`` or a split folder may be (:data:`MAX_NAME_BYTES`), or
one holding a control character, a line break or a bidirectional override, was made by hand (:func:`odd_name`):
``featstore check`` lists each as a finding (:func:`odd_names`) and goes on with the rest. A 1 MB name printed 1 MB
lines, and a line break forged a line of ``info`` ("rows 1000000 ... complete" for a 4-row split): a store holding
such a name (:func:`unshowable`) is refused where it is opened (:func:`refuse_odd_names`: every reading command and the
writer) and where its groups are listed (``layout.hard_groups``), in one line with the name escaped and cut. Other
control characters and bidi overrides are shown escaped, as every line the command line prints is (attack 3); names
of unicode letters and spaces up to 255 bytes are untouched.
"""

from __future__ import annotations

import unicodedata

import h5py

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.store.attr_dense import UNDEF, FileBytes, Unparsed, driver_of
from featstore.store.btree1 import HeaderUnread, object_links
from featstore.store.strings import shown

MAX_NAME_BYTES = 255  # a group name: what a --name or a split folder may be (a file name: 255 bytes)
MOST_LISTED = 8  # names a message lists (then how many more)
MOST_FINDINGS = 100  # odd names check lists one by one (then how many more)
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines splits at
_BIDI = frozenset(map(chr, (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))))


def odd_name(name: str | bytes) -> str | None:
    """Why ``name`` (one HDF5 link name) is one featstore never writes, or None. Example::

    >>> odd_name("vgg16"), odd_name("été 猫"), odd_name("a\\nb"), odd_name("e" * 300)
    (None, None, 'a line break', '300 bytes, over the 255 a name may have')
    """
    if isinstance(name, bytes):  # h5py gives a name that is not UTF-8 as bytes
        return "not UTF-8"
    if len(name) <= MAX_NAME_BYTES and name.isascii() and name.isprintable():
        return None
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"{size:,} bytes, over the {MAX_NAME_BYTES} a name may have"
    for c in name:
        if c in _LINE_BREAKS:
            return "a line break"
        if c in _BIDI:
            return f"a bidirectional override (U+{ord(c):04X})"
        if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0:
            return f"a control character (\\x{ord(c):02x})"
        if unicodedata.category(c) in ("Cf", "Co", "Cn", "Cs"):  # zero-width and format characters: 'vgg16\u200b' was
            return (
                f"an invisible character (U+{ord(c):04X})"  # printed as 'vgg16' and refused as not 'vgg16' (attack 27)
            )
    return None


def unshowable(name: str | bytes) -> str | None:
    """Why no message can show ``name`` in one line of bounded length (over 255 bytes, a line break), or None: what
    refuses a store. Example::

    >>> unshowable("x\\x1b[2J"), unshowable("a\\rb")
    (None, 'a line break')
    """
    why = odd_name(name)
    return why if why and (why == "a line break" or why.endswith("a name may have")) else None


def bounded_odd(findings: list[str]) -> list[str]:
    """``findings`` with at most :data:`MOST_FINDINGS` odd-name findings (:func:`odd_finding`), then how many more."""
    odd = [i for i, x in enumerate(findings) if x.endswith(_ODD_TAIL)]
    if len(odd) <= MOST_FINDINGS:
        return findings
    cut = set(odd[MOST_FINDINGS:])
    kept = [x for i, x in enumerate(findings) if i not in cut]
    return kept + [f"/: {len(cut):,} more object(s) with names featstore never writes; extract into a new --store"]


_ODD_TAIL = "featstore never writes such a name, so the store is crafted or damaged; extract into a new --store"


def odd_finding(parent: str, name: str | bytes, why: str) -> str:
    """``check``'s finding for ``name``, a member of the group at ``parent`` ('/', '/vgg16'), with the fix."""
    return f"{parent} holds an object named {shown(name, 60)} ({why}): {_ODD_TAIL}"


def _refused(path, finding: str) -> StoreError:
    return StoreError(
        f"store {terminal_safe(str(path))} is refused: {finding} (`featstore check` lists every such name)"
    )


def refuse_odd(g: h5py.Group, names: list) -> None:
    """Raise StoreError for the first of ``names`` (members of ``g``) that no message could show (:func:`unshowable`)."""
    for name in names:
        if why := unshowable(name):
            raise _refused(g.file.filename, odd_finding(g.name, name, why))


def odd_names(f: h5py.File, first: bool = False, rule=odd_name) -> list[str]:
    """``check``'s findings for every object of ``f`` whose name featstore never writes (``rule``: why, or None;
    ``first``: the first only); what is under such a group is not walked further. Links are not followed; a name h5py
    cannot decode stops the walk (``layout.foreign_objects`` names it)."""
    found: list[str] = []
    odd: set[str] = set()  # paths already named: their members are not named again

    def visit(path, link):
        parts = path.split("/")  # its ancestors only: testing every odd path so far was K x K (attack 27 #3)
        if any("/".join(parts[:i]) in odd for i in range(1, len(parts))):
            return None
        parent, _, name = path.rpartition("/")
        if why := rule(name):
            odd.add(path)
            found.append(odd_finding("/" + parent, name, why))
            return True if first else None
        return None

    try:
        f.visititems_links(visit)
    except (SystemError, UnicodeDecodeError):  # a name that is not UTF-8: foreign_objects and check name it
        pass
    return found  # check bounds its findings once, after its group walk has named the same objects again


def refuse_odd_names(f: h5py.File, path) -> None:
    """Raise StoreError naming the first object of ``f`` whose name no message could show (:func:`unshowable`), or
    the first group whose members HDF5 cannot be trusted to list (:func:`listing_findings`): what every opening of a
    store runs (with ``layout.refuse_foreign``), so no command prints such a name or lists such a group."""
    refuse_listings(f, path)
    if found := odd_names(f, first=True, rule=unshowable):
        raise _refused(path, found[0])


_LISTING_TAIL = "featstore never writes such a group, so the store is crafted or damaged; extract into a new --store"


def listing_findings(g: h5py.Group, deep: bool = True, first: bool = False) -> list[str]:
    """``check``'s findings for the groups at and under ``g`` (``deep``; else ``g`` only; ``first``: the first only)
    whose members HDF5 cannot be trusted to list, found from the file's bytes before HDF5 lists any
    (``btree1.object_links``: over ``MAX_LINKS`` links, a name twice, a B-tree reaching a node twice: a root whose
    B-tree nodes all repeated one child listed its one extractor 1,024 times from 544 bytes added, attack 29). Each
    object header is read once; what is under a group found so is not walked."""
    if driver_of(g) != "sec2":  # HDF5_DRIVER set: the file's bytes are not read directly
        return [
            f"{g.name}: its members are refused before HDF5 lists them with HDF5's {driver_of(g)!r} driver; "
            f"open the store with HDF5's default driver (unset HDF5_DRIVER)"
        ]
    fh, found = FileBytes(g), []
    todo = [(g.name, h5py.h5g.get_objinfo(g.id).objno[0])]
    if fh.writable:  # what this process changed is in HDF5's cache until written
        root = h5py.h5g.get_objinfo(g.file["/"].id).objno[0]
        if fh.size - fh.base <= root:  # a file this opening made (nothing past its superblock yet): its own groups
            return []  # (not flushed early for that: a new store's layout stays as it was, as layout.check_root's)
        g.file.flush()
        fh = FileBytes(g)
    key = (fh.key[1:], todo[0], deep, first)  # the file's identity and state: a read-only opening's walk is kept
    if not fh.writable and (kept := _WALKED.get(key)) is not None:
        return list(kept)
    seen_first = todo[0][1]
    seen = {seen_first: g.name}  # each object's address: the first path it was reached by
    heaps: list = []  # the local heaps' data met: each group's its own (btree1._own_heap)
    while todo and not (first and found):
        where, at = todo.pop()
        try:
            links = object_links(fh, at, heaps) or []
        except Unparsed as exc:  # a header that does not parse: a dataset's damage is HDF5's to name where read
            if isinstance(exc, HeaderUnread) and at != seen_first and not _is_group(g.file, where):
                continue
            found.append(f"{path_text(where)}: its members are refused before HDF5 lists them ({exc}): {_LISTING_TAIL}")
            continue
        for name, target in links if deep else ():
            path = where.rstrip("/") + "/" + name.decode("utf-8", "surrogateescape")
            if target in seen:  # two hard links to one object: a split that is another split (attack 29 #7)
                found.append(
                    f"{path_text(path)} is the object {path_text(seen[target])} is (two names of one HDF5 object, which "
                    f"featstore never writes: its rows would be read as both): remove one (h5py: del f[name]) or "
                    f"extract into a new --store"
                )
            elif target != UNDEF:  # an object reached twice is walked once, as HDF5 visits it
                seen[target] = path
                todo.append((path, target))
    if not fh.writable:
        _WALKED[key] = tuple(found)
        while len(_WALKED) > 8:
            _WALKED.pop(next(iter(_WALKED)))
    return found


def _is_group(f: h5py.File, path: str) -> bool:
    """Whether HDF5 opens the object at ``path`` (its parents' listings checked) as a group; False when it cannot."""
    try:
        return h5py.h5i.get_type(h5py.h5o.open(f.id, path.encode("utf-8", "surrogateescape"))) == h5py.h5i.GROUP
    except Exception:  # noqa: BLE001 (HDF5 cannot open it: its damage is named where it is read)
        return False


_WALKED: dict = {}  # (file identity and state, group, how) -> listing_findings' findings, for read-only openings


def refuse_listings(g: h5py.Group, path, deep: bool = True) -> None:
    """Raise StoreError for the first of :func:`listing_findings` (``deep``: ``g`` and every group under it)."""
    if found := listing_findings(g, deep, first=True):
        raise StoreError(f"store {terminal_safe(str(path))} is refused: {found[0]}")


def path_text(path: str, most: int = 300) -> str:
    """An object's path in a store for a message: escaped, cut after ``most`` characters."""
    return terminal_safe(path if len(path) <= most else path[:most] + "...")


def names_text(names: list[str], most: int = MOST_LISTED) -> str:
    """Extractor or split names for a message: the first ``most``, each escaped, then how many more ('none': none)."""
    more = f", ... ({len(names) - most:,} more)" if len(names) > most else ""
    return ", ".join(terminal_safe(n) if len(n) <= MAX_NAME_BYTES else shown(n) for n in names[:most]) + more or "none"

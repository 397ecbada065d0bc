"""``<store>.leaks.json``: the counts ``featstore leaks`` found, written whole, read back with bounds for ``info``.

The record is an input that anyone can edit, so it is read with limits before and while parsing: at most
:data:`MAX_RECORD_BYTES`, nesting at most :data:`MAX_DEPTH` deep, no NaN/Infinity, integers of at most 18 digits and
finite floats; each entry's fields are type-checked before use. A record that fails any of these is reported as
damaged in one line; it never crashes ``featstore info`` (a nested ``[[[[...`` raised RecursionError, a count of
``1e400`` OverflowError).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import stat
import time
from pathlib import Path

from featstore import sticky
from featstore.errors import OutputError, StoreError
from featstore.experiments.leaks.result import LeakReport, record_path
from featstore.outputs import terminal_safe, write_text
from featstore.runs.versions import file_lock

logger = logging.getLogger(__name__)

FORMAT = 3  # 1: fixed threshold; 2: adds "calibration" and "same_bytes"; 3: adds "within" and "near_within"
MAX_RECORD_BYTES = 1 << 20  # a record of many extractors is a few KiB
MAX_DEPTH = 6  # record > extractors > name > commits (or within) > split > key
MAX_COUNT = 10**15  # more rows than any store holds


class BadRecord(ValueError):
    """The record file is not a featstore leaks record within bounds (the message says why)."""


def _reject(text: str):
    """parse_constant hook: NaN and Infinity are not JSON."""
    raise BadRecord(f"holds {text}")


def _integer(text: str) -> int:
    """parse_int hook: at most 18 digits."""
    if len(text.lstrip("-")) > 18:
        raise BadRecord("holds an integer of more than 18 digits")
    return int(text)


def _real(text: str) -> float:
    """parse_float hook: finite only (``1e400`` would be inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise BadRecord(f"holds the number {text[:20]}, out of range")
    return value


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)  # a string (closed or not: linear time) or a bracket


def _depth(text: str) -> int:
    """Deepest nesting of brackets outside strings (checked before json parses, which recurses)."""
    depth = deepest = 0
    for m in _TOKEN.finditer(text):
        c = m.group()[0]
        if c != '"':
            depth += 1 if c in "[{" else -1
            deepest = max(deepest, depth)
    return deepest


def read_record(path: str | os.PathLike) -> dict | None:
    """The record as a dict (``None`` if there is none); :class:`BadRecord` says what is wrong with a bad one.

    >>> read_record("/nonexistent.h5.leaks.json") is None
    True
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadRecord(f"cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadRecord("is not a regular file")
        if st.st_size > MAX_RECORD_BYTES:
            raise BadRecord(f"is {st.st_size} bytes, over the {MAX_RECORD_BYTES} a record may take")
        raw = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise BadRecord(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord(f"is over the {MAX_RECORD_BYTES} bytes a record may take")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("is not UTF-8 text") from None
    if _depth(text) > MAX_DEPTH:
        raise BadRecord(f"is nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_reject, parse_int=_integer, parse_float=_real)
    except BadRecord:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"is not JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("extractors"), dict):
        raise BadRecord("is not a featstore leaks record (no 'extractors')")
    return data


def _count(value: object) -> int:
    """A row count from the record, or BadRecord."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise BadRecord(f"has a count {str(value)[:20]!r} that is not a number of rows")
    return value


def check_entry(rec: object) -> dict:
    """An extractor's entry with every field ``info`` uses type-checked, or BadRecord."""
    if not isinstance(rec, dict):
        raise BadRecord("has an entry that is not an object")
    counts, rows, commits = rec.get("counts"), rec.get("rows", {}), rec.get("commits")
    if not isinstance(counts, dict) or not isinstance(rows, dict) or not isinstance(commits, dict):
        raise BadRecord("has an entry without counts, rows or commits")
    for split, n in counts.items():
        if _count(n) > _count(rows.get(split, n)):
            raise BadRecord(f"counts more {split!r} rows than it checked")
    if not all(isinstance(c, dict) for c in commits.values()):
        raise BadRecord("has a split commit that is not an object")
    t = rec.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
        raise BadRecord("has a threshold outside (0, 1]")
    if not isinstance(rec.get("reference"), str) or not isinstance(rec.get("fingerprint"), (str, type(None))):
        raise BadRecord("has no reference split name or fingerprint")
    cal = rec.get("calibration", {})
    if not isinstance(cal, dict) or not isinstance(cal.get("method", ""), str):
        raise BadRecord("has a calibration that is not an object")
    q = cal.get("quantile")
    if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1):
        raise BadRecord("has a calibration quantile outside (0, 1)")
    _check_within(rec.get("within", {}))  # absent from a record of format 2 or older: nothing to show
    near = rec.get("near_within", {})
    if not isinstance(near, dict) or any(_count(n) > _count(rows.get(s, n)) for s, n in near.items()):
        raise BadRecord("has near-duplicates inside a split ('near_within') that are not row counts of it")
    return rec


def _check_within(within: object) -> None:
    """The "within" part of an entry (format 3: per split its rows, distinct images and groups of copies), or
    BadRecord."""
    if not isinstance(within, dict) or not all(isinstance(c, dict) for c in within.values()):
        raise BadRecord("has copies within a split ('within') that are not objects")
    for split, c in within.items():
        rows, distinct = _count(c.get("rows")), _count(c.get("distinct"))
        groups, in_groups = _count(c.get("groups", 0)), _count(c.get("in_groups", 0))
        if not (
            distinct <= rows and in_groups <= rows and 2 * groups <= in_groups and distinct == rows - in_groups + groups
        ):
            raise BadRecord(f"has copies within split {str(split)[:40]!r} that do not add up")


def write_record(report: LeakReport) -> Path:
    """Add this extractor's result to ``<store>.leaks.json`` (temporary file + rename); returns its path. The record is
    read and written under a lock (``<store>.leaks.json.lock``, removed after): two runs at once both keep their
    entries.

    A regular file there that is not a record featstore can read (damaged, edited, over the limits) is never lost: it
    is kept aside as ``<store>.leaks.json.damaged`` (``.damaged.1``, ... when taken), logged with its new name, and a
    new record is written. Raises :class:`~featstore.errors.OutputError` (one line: where and what to do) when the file
    cannot be written, e.g. in a read-only store folder, or the bad record cannot be kept aside, or its lock file is
    refused (a link, FIFO or second name of another file there: the result computed is the caller's to keep).
    """
    path = record_path(report.store)
    lock = Path(f"{path}.lock")  # two `leaks` runs (two extractors) finishing together: each keeps the other's entry
    what = f"leaks record {terminal_safe(str(path))}"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(lock, what, f"{what} is being written", remove=True))
        except StoreError as exc:  # a colleague's hard link or FIFO at the lock's name: the results stay (attack 39 #3)
            raise OutputError(f"leaks record not written: {exc}.") from None
        theirs = sticky.ahead(path)  # a colleague's record in a sticky folder: nothing set aside, said once (#5)
        if theirs is not None:
            raise OutputError(_theirs_line(theirs))
        _refuse_link(path)
        try:
            data = read_record(path) or {"format": FORMAT, "extractors": {}}
        except BadRecord as exc:
            aside, why = _set_aside(path, str(exc)), exc
            data = {"format": FORMAT, "extractors": {}}
        else:
            aside = why = None
        data["format"] = FORMAT
        data["extractors"][report.extractor] = {
            "fingerprint": report.fingerprint,
            "commits": report.commits,
            "reference": report.reference,
            "threshold": report.threshold,
            "calibration": report.calibration.as_dict(),
            "counts": report.counts,
            "same_bytes": report.same_bytes,
            "within": {s: c.as_dict() for s, c in report.within.items()},
            "near_within": report.near_within,
            "rows": report.rows,
            "median": report.median,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = json.dumps(data, indent=1, default=str, allow_nan=False) if _finite(data) else None
        if text is None:  # a NaN median (an empty split): recorded as null
            text = json.dumps(_nulls(data), indent=1, default=str, allow_nan=False)
        try:
            write_text(path, text, "leaks record")
        except OutputError as exc:  # the old record is kept aside already: say where, or the user thinks it lost
            if aside is None:
                raise
            raise OutputError(
                f"{exc} The record that was there {why}; it is kept as {terminal_safe(str(aside))}"
            ) from None
        if aside is not None:
            logger.warning(
                "%s %s: kept it as %s; wrote a new record", terminal_safe(str(path)), why, terminal_safe(str(aside))
            )
    return path


def _theirs_line(theirs: sticky.Sticky) -> str:
    """The line for another user's record that this user may not replace (attack 34 #5: each run set it aside once
    more, as ``.damaged.N``, then failed to replace it, in a line that said its mode 0666 kept the user out)."""
    return "leaks record not written: " + theirs.line(
        f"ask {theirs.owner} to remove it, or run featstore leaks on a --store in a folder of yours."
    )


def _refuse_link(path: Path) -> None:
    """OutputError for a link at the record's name, said for a record (attack 40 #6): its name is fixed (no option
    names it, so not "choose another name"), and a colleague's link is said as his. In a sticky folder
    :func:`sticky.ahead` said it already (only he may remove it)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        whose = "" if st.st_uid == os.geteuid() else f" (it is {sticky.owner_name(st.st_uid)}'s)"
        raise OutputError(
            f"leaks record not written: {terminal_safe(str(path))} is a symbolic link{whose}, and featstore never "
            f"writes through a link; remove it and run featstore leaks again"
        )


MAX_ASIDE = 100  # <record>.damaged, .damaged.1, ... tried before refusing


def _set_aside(path: Path, why: str) -> Path | None:
    """Rename the regular file ``path`` to the first free ``<path>.damaged[.N]`` (never replacing a file there); its new
    name, or None when ``path`` is not a regular file (a link, FIFO or folder: refused by the writer). OutputError when
    it cannot be kept aside: nothing is replaced then."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    problem = f"{MAX_ASIDE} damaged copies are there already"
    for n in range(MAX_ASIDE):
        aside = path.with_name(f"{path.name}.damaged" + (f".{n}" if n else ""))
        try:
            os.link(path, aside, follow_symlinks=False)  # fails on a taken name: an older damaged record stays
        except FileExistsError:
            continue
        except OSError as exc:
            problem = exc.strerror or str(exc)
            break
        try:
            os.unlink(path)
        except OSError as exc:  # the link is taken back: nothing piles up beside a record that cannot be replaced
            try:
                os.unlink(aside)
            except OSError:  # (in a sticky folder, a link to another's file is theirs too: not for root)
                logger.debug("could not remove %s", aside)
            theirs = sticky.refused(exc, path)
            if theirs is None:
                raise
            raise OutputError(_theirs_line(theirs)) from None
        return aside
    raise OutputError(
        f"leaks record {terminal_safe(str(path))} {why}, and it cannot be kept aside ({problem}); featstore never "
        f"replaces a record it cannot read. Move it away, then run featstore leaks again"
    )


def _finite(x: object) -> bool:
    """No NaN or inf anywhere in x."""
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite(v) for v in x)
    return True


def _nulls(x: object) -> object:
    """x with NaN/inf floats as None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _nulls(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nulls(v) for v in x]
    return x


def leaks_line(store: str | os.PathLike, extractor: str, entry: dict) -> str:
    """One line for ``featstore info``: the recorded counts, "not checked", STALE with the reason, or a bad record.

    ``entry`` is the extractor's part of :meth:`FeatureStore.info` (its fingerprint and split summaries). Never
    raises: whatever the record holds, the answer is one line, escaped for the terminal.

    >>> leaks_line("/nonexistent.h5", "vgg16", {"attrs": {}, "splits": {}})
    'leaks: not checked (featstore leaks)'
    """
    path = record_path(store)
    try:
        data = read_record(path)
        rec = (data or {}).get("extractors", {}).get(extractor)
        if rec is None:
            return "leaks: not checked (featstore leaks)"
        rec = check_entry(rec)
        counts = " / ".join(f"{n} {terminal_safe(str(s))}" for s, n in rec["counts"].items()) or "no"
        cal = rec.get("calibration") or {}
        how = (
            f"calibrated on {terminal_safe(rec['reference'])}, quantile {cal['quantile']:g}"
            if cal.get("method") == "train-quantile" and cal.get("quantile") is not None
            else "given"
            if cal.get("method") == "given"
            else "fixed"
        )
        said = (
            f"{counts} rows with a near-duplicate in {terminal_safe(rec['reference'])} "
            f"(threshold {float(rec['threshold']):.4g}, {how}" + _within_text(rec.get("within", {}))
        )
        why = _stale_reason(rec, entry)
    except BadRecord as exc:
        theirs = sticky.ahead(path)  # a colleague's, in a sticky folder: no run of this user's can replace it
        fix = "re-run featstore leaks to replace it"
        if theirs is not None:
            fix = (
                f"it is {theirs.owner}'s, in a folder with the sticky bit: ask {theirs.owner} to remove it, then {fix}"
            )
        return f"leaks: record {terminal_safe(str(path))} is damaged: it {exc}; {fix}"
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, OverflowError) as exc:
        return f"leaks: record {terminal_safe(str(path))} is damaged ({type(exc).__name__}); re-run featstore leaks"
    if why:
        return f"leaks: STALE ({why}); re-run featstore leaks. It found {said})"
    return f"leaks: {said}; featstore leaks)"


def _within_text(within: dict) -> str:
    """``"; byte-identical copies inside a split: test 96 rows of 12 distinct images"`` for the splits with copies,
    else ''. (The near-duplicates inside a split are recorded, not shown: at a calibrated threshold about 1 % of
    distinct rows are, like the near-duplicates in train, and the line stays the length it was.)"""
    said = [
        f"{terminal_safe(str(s))} {c['rows']} rows of {c['distinct']} distinct images"
        for s, c in within.items()
        if c["distinct"] < c["rows"]
    ]
    return f"; byte-identical copies inside a split: {', '.join(said)}" if said else ""


def _stale_reason(rec: dict, entry: dict) -> str:
    """Why a record no longer describes the store's features ('' if it still does)."""
    if rec["fingerprint"] != entry.get("attrs", {}).get("fingerprint"):
        return "recorded for other features: the fingerprint differs"
    for split, commit in rec["commits"].items():
        now = entry.get("splits", {}).get(split)
        if now is None or "error" in now:
            return f"split '{terminal_safe(str(split))}' is gone or damaged"
        if any(now.get(k) != v for k, v in commit.items()):
            return f"split '{terminal_safe(str(split))}' was re-extracted or changed since"
    return ""

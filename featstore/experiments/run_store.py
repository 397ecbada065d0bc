"""Whether a store is the one a run was made on, before ``runs evaluate`` records a new split of it as the run's own.

A store is the run's when a split the run recorded holds the same rows there (:func:`_same_split`: the same paths in
the same order and the same ``listing_sha256``: the image listing's digest, or for rows written from arrays the digest
of the rows themselves, ``featstore.store.digests``). At the path the run recorded, a store holding none of them was
re-created since (another dataset's); elsewhere, a copy holding one is the run's store moved with its runs.
"""

from __future__ import annotations

from featstore.errors import ConfigError
from featstore.experiments.protocol import OOF
from featstore.runs.record import RunRecord, digest_paths
from featstore.store.digests import identifies_rows, split_listing
from featstore.store.reader import FeatureStore


def refuse_other_store(rec: RunRecord, fs: FeatureStore, split: str) -> None:
    """ConfigError unless ``fs`` is the store the run was made on: its path as the run recorded it, or (a store moved
    or copied with its runs) a split the run recorded holding the same rows there (:func:`_same_split`). Another
    dataset extracted alike has the same fingerprint: its split recorded as the run's own was listed beside the run's
    other figures, and the run's real one could never be recorded."""
    own = rec.get("store")
    present = fs.splits(rec.extractor) if rec.extractor in fs.extractors() else []
    if own == str(fs.path.resolve()):
        _refuse_replaced_store(rec, fs, split, present)
        return
    compared = False
    for name, info in _recorded(rec, present):
        if not (identifies_rows(info.listing_sha256) or own is None):
            continue  # rows written from arrays before their digest was recorded: only the run's own path is known
        compared = True  # a run that records no store (an older featstore) is compared by its paths at least
        if _same_split(rec, fs, name, info):
            return
    if own is None and not compared:
        return  # an older run recording neither its store nor a split found here: nothing to tell them apart by
    if not compared:  # every recorded split here was written from arrays by an older featstore: nothing to compare
        raise ConfigError(
            f"{fs.path} is not the store run {rec.id} was made on ({own}): its splits were written from arrays by a "
            f"featstore that recorded no digest of their rows, so only the store at the path the run recorded is known "
            f"to hold its rows. Evaluate it with --store {own}, or fit a run on this store (`featstore fit --store "
            f"{fs.path}`)"
        )
    raise ConfigError(
        f"{fs.path} is not the store run {rec.id} was made on ({own or 'not recorded'}): none of the splits it "
        f"recorded ({', '.join(rec.predictions) or 'none'}) holds the same rows there, so its {split!r} would be "
        f"recorded as the run's own. Evaluate it with --store naming the run's store, or fit a run on this store "
        f"(`featstore fit --store {fs.path}`)"
    )


def _refuse_replaced_store(rec: RunRecord, fs: FeatureStore, split: str, present: list[str]) -> None:
    """ConfigError when the store at the path the run recorded was re-created since: no split the run recorded holds
    the same rows there (:func:`_same_split`), so a new split there is another dataset's. One split still the same (a
    store whose train alone was extended since) keeps it the run's store."""
    other = []
    for name, info in _recorded(rec, present):
        if _same_split(rec, fs, name, info):
            return
        here = fs.split_info(name, rec.extractor).get("committed_rows")
        other.append(f"{name!r}: {here} rows here, {info.n} recorded" + (", other ones" if here == info.n else ""))
    if not other and rec.predictions:  # none of them there: nothing shows it is the run's store (attack 16)
        other = [f"{', '.join(repr(s) for s in rec.predictions)} recorded, none of them in the store there"]
    if other:
        raise ConfigError(
            f"{fs.path} is the path of run {rec.id}'s store, but the store there was replaced: none of the splits the "
            f"run recorded holds the same rows there ({'; '.join(dict.fromkeys(other))}), so its {split!r} would be "
            f"recorded as the run's own. Evaluate the run on the store it was made on, or fit a run on this store "
            f"(`featstore fit --store {fs.path}`)"
        )


def _recorded(rec: RunRecord, present: list[str]):
    """``(split, recorded predictions)`` of each split the run recorded that the store holds (train's out-of-fold
    figures are train's rows)."""
    for s, info in rec.predictions.items():
        name = s[: -len(OOF)] if s.endswith(OOF) else s
        if name in present:
            yield name, info


def _same_split(rec: RunRecord, fs: FeatureStore, name: str, info) -> bool:
    """Whether split ``name`` of ``fs`` holds the rows the run recorded for it: the same paths in the same order, and
    the same ``listing_sha256`` when the run recorded one (the image listing's digest, or the digest of rows written
    from arrays: ``featstore.store.digests``). The one test both refusals above make."""
    here = split_listing(fs.split_info(name, rec.extractor))
    if info.listing_sha256 not in (None, here):
        return False
    return digest_paths(fs.paths(name, rec.extractor)) == info.paths_sha256

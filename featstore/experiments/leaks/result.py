"""What ``featstore leaks`` finds: a pair per flagged query row, the threshold and how it was chosen, the counts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

DEFAULT_QUERY = ("test", "validation")  # checked against train when no split is named (those the store has)
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_QUANTILE = 0.99  # of train's own leave-one-out nearest-neighbour similarity (see Calibration)
DEFAULT_SAMPLE = 2000  # train rows whose nearest other train row is measured for the calibration (seeded)
EXACT = 1 - 1e-6  # a similarity this high (after rounding to 6 places) is the same feature vector
RECORD_SUFFIX = ".leaks.json"
NEAR_MISSES = 10  # most similar pairs below the threshold kept for context


class LeakPair(NamedTuple):
    """A query row and the training row it duplicates (or its most similar one)."""

    query_split: str  # e.g. "test"
    query_path: str  # as stored: relative to the query split's source_root (e.g. "test/cat/001.png")
    train_path: str  # as stored, relative to the reference split's source_root
    similarity: float  # centred cosine of the two rows' features, at most 1.0
    same_label: bool  # both rows carry the same class
    same_bytes: bool = False  # the two image files hold the same bytes (sha256), whatever the features say


class SplitCopies(NamedTuple):
    """Rows of one split whose image files hold the same bytes (sha256): copies of one image counted as rows.

    ``distinct`` counts each group once (a file that could not be read counts as distinct); ``examples`` are the
    stored paths of a few of the largest groups (a few paths each).
    """

    rows: int  # rows in the split
    distinct: int  # distinct images among them: rows - in_groups + groups
    groups: int  # groups of two or more rows with the same file bytes
    in_groups: int  # rows in those groups
    largest: int  # rows in the largest group
    examples: tuple[tuple[str, ...], ...] = ()  # stored paths of a few groups, largest first
    example_rows: tuple[int, ...] = ()  # rows in each of those groups

    def advice(self, split: str, reference: bool = False) -> str:
        """One line saying what the copies do to the split's figures and what to do, or '' when it has none.

        >>> SplitCopies(96, 12, 12, 96, 8).advice("test")[:80]
        'test holds 96 rows of 12 distinct images (12 groups of byte-identical files, up '
        """
        if not self.groups:
            return ""
        head = (
            f"{split} holds {self.rows} rows of {self.distinct} distinct images ({self.groups} "
            f"group{'s' if self.groups > 1 else ''} of byte-identical files, up to {self.largest} copies each): "
        )
        if reference:
            return head + (
                "cross-validation can put copies of one image on both sides of a fold and counts them as independent "
                f"rows; remove the copies (keep one file of each group) and re-extract {split}"
            )
        return head + (
            "its accuracy intervals and paired tests count copies as independent rows; remove the copies (keep one "
            f"file of each group) and re-extract {split}, or read its figures as resting on {self.distinct} images, "
            "not " + str(self.rows)
        )

    def as_dict(self) -> dict:
        """The counts for the record (no paths)."""
        return {k: getattr(self, k) for k in ("rows", "distinct", "groups", "in_groups", "largest")}


@dataclass(frozen=True)
class Calibration:
    """How the threshold was chosen: given, or from train's own nearest-neighbour similarities.

    ``quantile`` of the similarity between each sampled train row and its nearest *other* train row (leave one
    out): a query row at or above it is closer to a train image than all but ``1 - quantile`` of train's images
    are to their nearest neighbour, whatever the extractor's scale of similarity. Train rows whose nearest other
    train row is the same feature vector (copies inside train) are left out: they say nothing about distinct images.
    """

    method: str  # "train-quantile" (calibrated) or "given" (--threshold)
    threshold: float  # the resulting threshold
    quantile: float | None = None  # e.g. 0.99; None when given
    sample: int = 0  # train rows measured (a seeded sample when train is larger than DEFAULT_SAMPLE)
    seed: int = 0  # of the sample
    train_rows: int = 0  # rows in train
    copies_in_train: int = 0  # sampled rows left out: their nearest other train row is the same vector
    median: float | None = None  # median of the measured similarities (where distinct train images lie)

    def describe(self) -> str:
        """One line: the threshold and where it came from.

        >>> Calibration("given", 0.9).describe()
        'threshold 0.9 (given)'
        """
        if self.method == "given":
            return f"threshold {self.threshold:g} (given)"
        left = f"; {self.copies_in_train} with an exact copy inside train left out" if self.copies_in_train else ""
        part = f"a seeded sample of {self.sample}" if self.sample < self.train_rows else f"all {self.sample}"
        return (
            f"threshold {self.threshold:.4f} (calibrated: {self.quantile:.4g} quantile of the similarity of {part} "
            f"train rows to their nearest other train row, median {self.median:.3f}{left})"
        )

    def caveat(self) -> str:
        """A warning when the quantile rests on fewer than 5 measured rows above it (small train), else ''.

        >>> Calibration("train-quantile", 0.5, 0.99, 24, 0, 24, 0, 0.3).caveat()[:40]
        'only 24 train rows measured: the 0.99 qu'
        """
        if self.method == "given" or self.quantile is None:
            return ""
        measured = self.sample - self.copies_in_train
        if measured * (1 - self.quantile) >= 5:
            return ""
        return (
            f"only {measured} train rows measured: the {self.quantile:g} quantile rests on fewer than 5 rows above "
            f"it, so expect look-alikes among the flagged rows (look at the PNG), or give --threshold"
        )

    def as_dict(self) -> dict:
        """Plain values for the record."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class LeakReport:
    """What :func:`~featstore.experiments.leaks.find_leaks` found."""

    store: str  # the store file
    extractor: str  # extractor group whose features were compared
    reference: str  # split searched for neighbours ("train")
    threshold: float  # rows whose nearest reference row is at or above this similarity are reported
    pairs: list[LeakPair]  # every flagged query row (same bytes, or similarity >= threshold), most similar first
    counts: dict[str, int]  # query split -> rows flagged
    rows: dict[str, int]  # query split -> rows checked
    median: dict[str, float]  # query split -> median nearest-neighbour similarity (where distinct rows lie)
    near_misses: list[LeakPair]  # the most similar pairs below the threshold, for context
    source_roots: dict[str, str]  # split -> folder its stored paths are relative to
    seconds: float  # time the search took
    calibration: Calibration = field(default_factory=lambda: Calibration("given", 1.0))  # how threshold was chosen
    same_bytes: dict[str, int] = field(default_factory=dict)  # query split -> rows whose file has a copy in train
    unhashed: dict[str, list[str]] = field(default_factory=dict)  # split -> "path (why)" of files not compared by bytes
    fingerprint: str | None = None  # the extractor's fingerprint, read before the search
    commits: dict[str, dict] = field(default_factory=dict)  # split -> what identified its rows before the search
    within: dict[str, SplitCopies] = field(default_factory=dict)  # split -> its byte-identical files (every split read)
    near_within: dict[str, int] = field(default_factory=dict)  # query split -> rows whose nearest other row of the
    # same split is at or above the threshold (byte-identical copies included)
    changed: dict[str, int] = field(default_factory=dict)  # split -> rows whose image file changed since extraction
    # (another size or mtime than the split's listing): not compared by content (``featstore.store.changed``)


def record_path(store: str | os.PathLike) -> Path:
    """Where the result of ``featstore leaks`` is recorded: ``features.h5`` -> ``features.h5.leaks.json``."""
    return Path(f"{os.fspath(store)}{RECORD_SUFFIX}")

"""Near-duplicate images between splits (``featstore leaks``): identical files by content, near copies by features.

A test image that is a copy of a training image (exact, resized, re-encoded) inflates test accuracy. For every row
of the query splits this finds the most similar training row: cosine similarity of the flattened features after
subtracting the training split's mean feature vector ("centred cosine"; ReLU activations are all positive, so plain
cosine puts every pair near 1, and flattening keeps the spatial layout that tells look-alikes from copies). A row is
flagged when its similarity reaches a threshold *calibrated on this extractor* (a high quantile of train's own
leave-one-out nearest-neighbour similarity, :mod:`.threshold`), or when its image file has the same bytes as a
training image's (sha256, :mod:`.hashes`), whatever the features say. Both splits are streamed in blocks of whole
chunks (:mod:`.search`), so the check works beyond memory; NaN or inf features are refused.

Modules: :mod:`.result` (LeakPair, LeakReport, Calibration), :mod:`.search`, :mod:`.threshold`, :mod:`.hashes`,
:mod:`.within` (byte-identical files inside one split), :mod:`.find` (find_leaks), :mod:`.record` (``<store>.leaks.json`` and the ``info`` line), :mod:`.draw` (CSV, PNG).

>>> report = find_leaks("features.h5")                       # doctest: +SKIP
>>> report.counts, report.pairs[0]                           # doctest: +SKIP
({'test': 3, 'validation': 0}, LeakPair(query_split='test', query_path='cat/copy.png', ...))
"""

from featstore.experiments.leaks.draw import leaks_csv, leaks_png
from featstore.experiments.leaks.find import find_leaks
from featstore.experiments.leaks.record import BadRecord, leaks_line, read_record, write_record
from featstore.experiments.leaks.result import (
    DEFAULT_QUANTILE,
    DEFAULT_SAMPLE,
    Calibration,
    LeakPair,
    LeakReport,
    SplitCopies,
    record_path,
)

__all__ = [
    "DEFAULT_QUANTILE",
    "DEFAULT_SAMPLE",
    "BadRecord",
    "Calibration",
    "LeakPair",
    "LeakReport",
    "find_leaks",
    "leaks_csv",
    "leaks_line",
    "leaks_png",
    "SplitCopies",
    "read_record",
    "record_path",
    "write_record",
]

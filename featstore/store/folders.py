"""Folders a store's images come from: no output of featstore goes inside them.

Each split records the data folder its paths are relative to (``source_root``); its images are listed from
``<source_root>/<split>``. A chart, a report or a runs folder written there would be listed by the next extract of
that split (a resume, ``--overwrite``, ``--augment``) as images of the dataset, so they are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from featstore.errors import FeatstoreError, OutputError
from featstore.store.reader import FeatureStore


def refuse_in_image_folders(
    out: str | os.PathLike, store: str | os.PathLike, what: str = "--out", shown: str | os.PathLike | None = None
) -> None:
    """Refuse a picture named inside a folder a split of ``store`` was extracted from (``<source_root>/<split>``): the
    next extract of that split (a resume, --overwrite, --augment) would list it as an image of the dataset.
    ``shown``: the path the user gave, named in the message when ``out`` is a probe inside it (``--runs DIR``)."""
    try:
        fs = FeatureStore(store)
        where = Path(out).parent.resolve()
        for name in fs.extractors():
            for split in fs.splits(name):
                root = fs.split_info(split, name).get("source_root")
                folder = Path(str(root)) / split if root else None
                if folder is not None and (where == folder or folder in where.parents):
                    given = out if shown is None else shown
                    inside = "is" if Path(given).resolve() == folder else f"is inside {folder},"
                    raise OutputError(
                        f"{what} {given} {inside} the image folder of split {split!r} of {fs.path}: the next "
                        f"`featstore extract` of it would take its pictures for images of the dataset. Write it "
                        f"outside the dataset, e.g. beside the store in {fs.path.parent}"
                    )
    except OutputError:
        raise
    except (FeatstoreError, OSError):
        return  # no store, or a damaged one: the command itself says so

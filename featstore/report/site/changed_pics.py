"""The pictured rows whose image file changed since extraction: a report shows a placeholder and the reason for them,
never the picture now at the row's path (attack 64 #10: a gallery of "true cat, predicted cat" showed the eel that
reused the file name, under the cat's label, prediction and probability). The check is the store's
(:func:`featstore.store.changed.changed_rows`: size and mtime against the split's recorded listing, as ``extract``
compares them), made once per split for the rows the pages picture."""

from __future__ import annotations

import shlex

from featstore.errors import FeatstoreError
from featstore.store.changed import changed_rows


def changed_sources(fs, views, maps) -> dict[str, str]:
    """``{image file: why it is not pictured}`` for the galleries' items (each run's extractor and split) and the
    maps' points whose file changed since extraction. Rows of a group the store cannot tell (an ensemble's joined
    extractor, rows written from arrays) are pictured as before."""
    wanted: dict[tuple[str, str], dict[int, str]] = {}
    for v in views:
        for g in v.galleries:
            for i in g.items:
                wanted.setdefault((v.rec.extractor, g.split), {})[int(i.row)] = i.source
    for m in maps:
        for p in m.points:
            wanted.setdefault((m.extractor, p.split), {})[int(p.row)] = p.source
    out: dict[str, str] = {}
    for (group, split), rows in wanted.items():
        try:
            flags = changed_rows(fs, group, split, list(rows))
        except (FeatstoreError, KeyError, ValueError):
            continue  # not one of the store's groups (an ensemble's "a+b"), or no listing: as before
        fix = f"featstore extract --split {shlex.quote(split)} --overwrite"
        for source, changed in zip(rows.values(), flags.tolist()):
            if changed:
                out[source] = f"changed since extraction (the row holds the features of the file then): `{fix}`"
    return out

"""``featstore similar --html``: the query and its neighbours as one HTML file that stands alone.

The thumbnails come from the store's thumbnail cache and are embedded as ``data:`` URIs, so the file can be moved
or mailed; names are escaped by the template (autoescape). Each image links to its file (``file://``). The page
carries :data:`MARKER` in its head: ``--html`` replaces only a file that does (:func:`is_similar_page`), and takes only
a name ending in ``.html`` or ``.htm``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from featstore.caches import CacheNotMade
from featstore.experiments.similar import SimilarResult
from featstore.models.scratch import private_tempdir
from featstore.outputs import check_own_output, starts_with
from featstore.report.site.build import cache_dir
from featstore.report.site.render import render, static_text
from featstore.report.site.thumbs import ThumbCache

logger = logging.getLogger(__name__)


MARKER = b'<meta name="generator" content="featstore similar">'  # in the first lines of every page written here
SUFFIXES = (".html", ".htm")


def is_similar_page(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a page :func:`similar_html` wrote (its :data:`MARKER` within the first 1 KiB)."""
    return starts_with(path, MARKER, within=1024)


def check_similar_out(out: str | os.PathLike, what: str = "--html") -> Path:
    """Refuse, before any work, an ``out`` that is not an ``.html`` name or holds a file that is not such a page
    (``--html train.py`` replaced a script); returns it."""
    return check_own_output(out, what, "a similar-images page", SUFFIXES, is_similar_page)


def similar_html(result: SimilarResult, out: str | os.PathLike, store: str | os.PathLike) -> Path:
    """Write the gallery of a :func:`~featstore.experiments.similar.similar` result to ``out``; returns it.

    Example::

        similar_html(similar("test/bag/test_00017.png", "features.h5"), "bag.html", "features.h5")
    """
    check_similar_out(out)
    root = result.source_root  # the searched split's folder: the neighbours' files
    query_source = result.query_file()  # the query's own split's folder, which may be another (attack 53 #1)
    query_source = query_source if result.query_kind == "stored" else os.path.abspath(query_source)
    sources = [query_source] + [os.path.join(root, n.path) if root else n.path for n in result.neighbours]
    with tempfile.TemporaryDirectory(prefix="featstore-similar-", dir=private_tempdir()) as tmp:
        cache = ThumbCache(cache_dir(store) / "thumbs")
        try:
            thumbs = cache.make(sources)
        except CacheNotMade as exc:  # a store in a folder the user cannot write: the page inlines them anyway
            logger.warning("thumbnails are not cached beside the store (%s); made for this page only", exc)
            cache = ThumbCache(Path(tmp) / "thumbs")
            thumbs = cache.make(sources)
        pictures = [
            (cache.data_uri(thumbs[s]), thumbs[s].reason, os.path.abspath(s) if os.path.isabs(s) else None)
            for s in sources
        ]
    return render(
        "similar.html.j2",
        Path(out),
        r=result,
        query=pictures[0],
        neighbours=list(zip(result.neighbours, pictures[1:])),
        css=static_text("site.css"),
        placeholder=static_text("placeholder.svg"),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %z"),
    )

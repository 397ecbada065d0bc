"""Pages from Jinja2 templates (HTML autoescape on), figures from Plotly, every file written through ``outputs``.

Everything that comes from a store or a run (file names, class names, parameters) reaches a page through the
templates' autoescape, or as JSON inside a ``<script type="application/json">`` block with ``<``, ``>`` and ``&``
escaped (:func:`script_json`), never as markup: a file named ``<script>.png`` is shown as text. Names are first made
printable (:func:`shown`: control characters and undecodable bytes as ``\\x..``). URLs to files outside the site
(the original images) are built from the absolute path, percent-encoded (:func:`file_url`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup

from featstore.outputs import terminal_safe, write_text

ASSETS = ("site.css", "site.js", "placeholder.svg")
PLOTLY = "plotly.min.js"


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the site's templates (autoescape, undefined names are errors)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("featstore.report.site", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shown=shown, num=num, pct=pct, interval=interval_text, basename=os.path.basename)
    env.globals.update(script_json=script_json, original=original)
    return env


def shown(text: object) -> str:
    """Text as a page shows it: control characters, bidi overrides and undecodable bytes as escapes.

    >>> shown("bad\\udcff\\u202e.png")
    'bad\\\\xff\\\\u202e.png'
    """
    return terminal_safe(str(text))


def num(value: object, digits: int = 4) -> str:
    """A number with ``digits`` decimals; "–" for None, NaN or a non-number.

    >>> num(0.81234), num(None), num(12, 0)
    ('0.8123', '–', '12')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def pct(value: object) -> str:
    """A proportion as a percentage with one decimal.

    >>> pct(0.8125)
    '81.2 %'
    """
    return "–" if num(value) == "–" else f"{100 * float(value):.1f} %"


def interval_text(iv: tuple[float, float] | None, digits: int = 4) -> str:
    """An interval to the same ``digits`` decimals as :func:`num` prints its figure (as the text reports do: at 2
    decimals 0.9974's interval read ``[1.00, 1.00]``, the figure outside it); "" when there is none.

    >>> interval_text((0.99623, 0.99818)), interval_text(None)
    ('[0.9962, 0.9982]', '')
    """
    return "" if iv is None else f"[{num(iv[0], digits)}, {num(iv[1], digits)}]"


def script_json(value: object, raw: str | None = None) -> Markup:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and line separators escaped.

    ``raw`` is JSON text already made (Plotly's); otherwise ``value`` is dumped (NaN becomes null).

    >>> str(script_json({"path": "</script><b>"}))
    '{"path": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = raw if raw is not None else json.dumps(_finite(value), ensure_ascii=False)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return Markup(text)


def _finite(x: object) -> object:
    """NaN and inf as None, recursively (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def file_url(path: str) -> str:
    """A ``file://`` URL of an absolute path (its bytes percent-encoded: any name, even not UTF-8).

    >>> file_url("/data/a b/<x>.png")
    'file:///data/a%20b/%3Cx%3E.png'
    """
    return "file://" + quote(os.fsencode(os.path.abspath(path)), safe="/")


def original(source: str) -> str | None:
    """The ``file://`` URL of an image file, or None when its split records no source folder (no absolute path)."""
    return file_url(source) if os.path.isabs(source) else None


def figure_json(fig) -> Markup:
    """A Plotly figure as JSON for :func:`script_json` (arrays encoded compactly by Plotly)."""
    import plotly.io as pio

    return script_json(None, pio.to_json(fig, validate=False, remove_uids=True))


def page(template: str, **context) -> str:
    """A template rendered into text (the report writes it into its folder through a descriptor)."""
    return environment().get_template(template).render(**context)


def render(template: str, path: Path, **context) -> Path:
    """Render a template into ``path`` (written whole, never through a link); returns ``path``."""
    return write_text(path, page(template, **context), "report page")


def static_text(name: str) -> str:
    """One of the site's static files, as text."""
    return resources.files("featstore.report.site").joinpath("static", name).read_text(encoding="utf-8")


def write_assets(site) -> list[str]:
    """The site's CSS, script, placeholder and Plotly's bundle into its ``assets/`` (Plotly's rewritten only when
    changed), through the :class:`~featstore.report.site.sitefolder.SiteFolder` ``site``; their names in the site."""
    import plotly.offline

    out = [site.write_text(f"assets/{name}", static_text(name), "report asset") for name in ASSETS]
    js = plotly.offline.get_plotlyjs()
    st = site.lstat(f"assets/{PLOTLY}")  # not followed: a link there is replaced, never taken as the bundle
    if not (st is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(js.encode("utf-8"))):
        site.write(f"assets/{PLOTLY}", lambda tmp: tmp.write_text(js, encoding="utf-8"), "report asset")
    return [*out, f"assets/{PLOTLY}"]

"""mkdocs hook: the README is the site's home page, so the front page is written once.

The README links to ``docs/<page>.md`` and the pages link back to ``../README.md``: both work on GitHub, and this
hook rewrites them for the site, where the README is ``index.md`` beside the pages. mkdocs checks every link after
the rewrite (``mkdocs build --strict`` fails on a dead one).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

README = "README.md"


def on_files(files, config):
    """Add the repository's README as the generated page ``index.md``."""
    text = (Path(config.config_file_path).parent / README).read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    """Links as GitHub resolves them -> links as the site resolves them."""
    if page.file.src_uri == "index.md":
        return re.sub(r"\]\(docs/", "](", markdown)
    return re.sub(r"\]\(\.\./README\.md", "](index.md", markdown)

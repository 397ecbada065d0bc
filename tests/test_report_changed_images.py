"""Attack 64 #10 (the report's half): an image file replaced after extraction (the same name, another picture) was
pictured in the run's galleries and the map under the stored row's label, prediction and probability, exit 0, no
word. Such a row gets the placeholder and the reason (changed since extraction, and the extract that fixes it), and
the report's notes say how many."""

from __future__ import annotations

import os
import shutil
import time

import featstore
from tests.conftest import TINY_CONFIG, write_data_root


def test_a_replaced_image_is_not_pictured_under_its_rows_figures(tmp_path):
    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    for split in ("train", "validation", "test"):
        featstore.extract(data, split, store, TINY_CONFIG)
    featstore.fit(store, "logreg")
    replaced = sorted((data / "test" / "cat").iterdir())[0]
    shutil.copyfile(sorted((data / "train" / "dog").iterdir())[0], replaced)  # another picture under the old name
    later = time.time() + 5
    os.utime(replaced, (later, later))
    result = featstore.build_report(store, out=tmp_path / "site", map_method="pca")
    html = "".join(p.read_text() for p in (tmp_path / "site" / "galleries").rglob("test-*.html"))
    assert "changed since extraction" in html and "featstore extract --split test --overwrite" in html
    (said,) = [n for n in result.notes if "changed since extraction" in n]
    assert said.startswith("1 pictured image(s) not shown; the first, ") and replaced.name in said, said
    others = "".join(p.read_text() for p in (tmp_path / "site" / "galleries").rglob("validation-*.html"))
    assert "changed since extraction" not in others  # the unchanged files are pictured as before

"""featstore report (issue 20): the site's pages, links, galleries, map, leaks, caches and escaping, without a browser.

The browser checks (console errors, screenshots) are in test_report_browser.py. Stores come from report_stores.py:
real images, runs and a leak check, no TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import FeatureStore, build_report
from featstore.cli import app
from featstore.errors import ConfigError, OutputError
from featstore.experiments.projection import project, sample_rows
from featstore.report.site.build import MANIFEST, cache_dir
from featstore.runs.folder import load_predictions, scan_runs_of

from .report_stores import HOSTILE, make_report_store


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The report store (built once for the module); tests that change it copy it first."""
    return make_report_store(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def site(made) -> tuple[Path, object]:
    """The store and its report."""
    return made, build_report(made, map_method="tsne")


@pytest.fixture
def own(made, tmp_path) -> Path:
    """A copy of the report store (its runs, leak record and images, no caches) that this test may change."""
    for p in made.parent.iterdir():
        if p.name not in ("features.report", "features.h5.cache"):
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp_path / p.name)
    with h5py.File(tmp_path / made.name, "a") as f:  # the copy's splits read their images from the copy
        for split in f["synthetic"]:
            f["synthetic"][split].attrs["source_root"] = str(tmp_path / "data")
    return tmp_path / made.name


class Links(HTMLParser):
    """Every href and src of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]


def links(page: Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.urls


def test_every_page_is_written_and_every_link_names_a_file(site):
    store, result = site
    out = result.index.parent
    assert result.index == store.with_suffix(".report") / "index.html"
    pages = sorted(out.rglob("*.html"))
    runs = scan_runs_of(store).records
    assert {p.name for p in (out / "runs").iterdir()} == {f"{r.id}.html" for r in runs}
    assert (out / "maps" / "synthetic.html").is_file() and (out / "leaks.html").is_file()
    assert (out / "assets" / "plotly.min.js").stat().st_size > 1_000_000  # the chart library travels with the site
    assert result.pages == len(pages)
    for page in pages:
        for url in links(page):
            parts = urlsplit(url)
            if parts.scheme == "file":  # an original image, outside the site
                assert Path(unquote(parts.path)).is_file(), (page, url)
            elif not url.startswith("#"):
                assert not parts.scheme and not parts.netloc, f"{page}: {url} leaves the site"
                target = (page.parent / unquote(parts.path)).resolve()
                assert target.is_file() and target.is_relative_to(out.resolve()), (page, url)


def test_two_clicks_from_a_run_to_its_mistakes(site):
    store, result = site
    out = result.index.parent
    rec = next(r for r in scan_runs_of(store).records if r.clf == "knn")
    run_page = f"runs/{rec.id}.html"
    assert run_page in links(result.index)  # click 1: the runs table
    preds = load_predictions(store.with_suffix(".runs") / rec.id, rec)
    proba, y = preds["validation__proba"], preds["validation__labels"]
    pred, conf = proba.argmax(1), proba.max(1)
    i, j = next((a, b) for a, b in zip(y, pred) if a != b)
    cell = f"../galleries/{rec.id}/validation-{i}-{j}.html"
    assert cell in links(out / run_page)  # click 2: the confusion cell
    page = (out / run_page).parent / cell
    html = page.read_text()
    rows = np.flatnonzero((y == i) & (pred == j))
    assert f"{len(rows)} image" in html
    order = rows[np.lexsort((rows, -conf[rows]))]  # most confident first
    stored = FeatureStore(store).paths("validation")
    shown = [unquote(urlsplit(u).path) for u in links(page) if u.startswith("file://")]
    assert shown == [os.path.join(store.parent, "data", stored[r]) for r in order]
    mistakes = (out / f"galleries/{rec.id}/validation-mistakes.html").read_text()
    assert "every mistake" in mistakes and "most confident first" in mistakes.lower()


def test_markup_in_a_file_name_stays_text(site):
    _, result = site
    out = result.index.parent
    for page in out.rglob("*.html"):
        text = page.read_text()
        assert "<img src=x" not in text, page
    gallery = next(p for p in out.rglob("test-0-0.html"))
    assert "&lt;img src=x onerror=window.__xss=1&gt;.png" in gallery.read_text()
    assert "\\u003cimg src=x onerror" in (out / "maps" / "synthetic.html").read_text()  # map points: escaped JSON


def test_thumbnails_are_cached_beside_the_store_and_reused(own, tmp_path):
    first = build_report(own, out=tmp_path / "a", map_method="pca")
    assert first.thumbs_made > 0 and (cache_dir(own) / "thumbs").is_dir()
    again = build_report(own, out=tmp_path / "b", map_method="pca")
    assert again.thumbs_made == 0 and again.thumbs_reused == first.thumbs_made + first.thumbs_reused
    image = own.parent / "data" / "validation" / "dog" / "validation_004.png"
    os.utime(image, ns=(1, 1))  # the file changed: its thumbnail is made again, once
    assert build_report(own, out=tmp_path / "b", map_method="pca").thumbs_made == 1


def test_an_image_that_cannot_be_read_gets_the_placeholder_and_its_reason(own, tmp_path):
    (own.parent / "data" / "validation" / "cat" / "validation_000.png").write_bytes(b"garbage")
    (own.parent / "data" / "validation" / "cat" / "validation_001.png").unlink()
    result = build_report(own, out=tmp_path / "site", map_method="pca")
    out = result.index.parent
    html = "".join(p.read_text() for p in (out / "galleries").rglob("validation-*-*.html"))
    assert "not an image Pillow can identify" in html and "not found" in html
    # said on the terminal too (`report` logs the notes): every image refused read as "thumbnails: 0 made" (attack 31)
    (said,) = [n for n in result.notes if "shown without a thumbnail" in n]
    assert said.startswith("2 image(s) shown without a thumbnail; the first, ") and "validation_00" in said, said
    assert "assets/placeholder.svg" in html
    index = (out / "index.html").read_text()
    assert "train/cat/broken.png" in index and "could not be read" in index  # the store's recorded failure


def test_a_folder_that_is_not_a_report_is_refused_and_stale_pages_are_removed(own, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="did not write"):
        build_report(own, out=mine)
    assert (mine / "thesis.tex").read_text() == "precious" and len(list(mine.iterdir())) == 1
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(OutputError, match="symbolic link"):
        build_report(own, out=link)
    out = tmp_path / "site"
    build_report(own, out=out, map_method="pca")
    knn = next(r for r in scan_runs_of(own).records if r.clf == "knn")
    ens = next(r for r in scan_runs_of(own).records if r.kind == "ensemble")
    for rid in (knn.id, ens.id):
        shutil.rmtree(own.with_suffix(".runs") / rid)
    build_report(own, out=out, map_method="pca")
    assert not (out / "runs" / f"{knn.id}.html").exists()
    assert not list((out / "galleries" / knn.id).glob("*.html"))
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def test_intervals_and_newer_metrics_are_shown_when_a_run_records_them(own, tmp_path):
    rec = next(r for r in scan_runs_of(own).records if r.clf == "logreg")
    path = own.with_suffix(".runs") / rec.id / "run.json"
    data = json.loads(path.read_text())
    test = data["metrics"]["test"]
    test["accuracy_ci"] = {
        "estimate": test["accuracy"],
        "low": 0.4321,
        "high": 0.9876,
        "level": 0.95,
        "method": "wilson",
    }
    test["log_loss"], test["ece"] = 0.5, 0.07
    test["reliability"] = [{"low": 0.0, "high": 0.5, "count": 3, "confidence": 0.4, "accuracy": 0.33}]
    path.write_text(json.dumps(data))
    other = next(r for r in scan_runs_of(own).records if r.clf == "knn")  # a run recorded before reliability bins
    other_path = own.with_suffix(".runs") / other.id / "run.json"
    old = json.loads(other_path.read_text())
    for split in old["metrics"].values():
        split.pop("reliability", None)
    other_path.write_text(json.dumps(old))
    out = build_report(own, out=tmp_path / "site", map_method="pca").index.parent
    index = (out / "index.html").read_text()
    assert "[0.4321, 0.9876]" in index  # to the figure's 4 decimals (attack 63 #6)
    page = (out / "runs" / f"{rec.id}.html").read_text()
    assert "log_loss" in page and "0.0700" in page and 'id="reliability"' in page
    assert 'id="reliability"' not in (out / "runs" / f"{other.id}.html").read_text()  # nothing guessed


def test_the_map_samples_in_proportion_records_its_sample_and_is_cached(own, tmp_path):
    assert {s: len(r) for s, r in sample_rows({"train": 900, "test": 100}, 100, 0).items()} == {"train": 90, "test": 10}
    cache = tmp_path / "maps"
    first = project(own, max_rows=20, method="tsne", cache=cache)
    assert sum(len(r) for r in first.sample.values()) == 20 and first.xy.shape == (20, 2) and not first.cached
    again = project(own, max_rows=20, method="tsne", cache=cache)
    assert again.cached and np.array_equal(again.xy, first.xy)
    assert all(np.array_equal(again.sample[s], first.sample[s]) for s in first.sample)
    with pytest.raises(ConfigError, match="choose from"):
        project(own, method="mds")
    if importlib.util.find_spec("umap") is None:
        with pytest.raises(ConfigError, match="umap-learn"):
            project(own, method="umap")
    out = build_report(own, out=tmp_path / "site", map_rows=20, map_method="tsne").index.parent
    sample = json.loads((out / "maps" / "synthetic.sample.json").read_text())
    assert sum(map(len, sample["sample"].values())) == 20 and sample["method"] == "t-SNE" and sample["seed"] == 0


def test_the_leaks_page_shows_the_flagged_pair_side_by_side(site):
    _, result = site
    html = (result.index.parent / "leaks.html").read_text()
    assert "copy_of_train_003.png" in html and "train_003.png" in html and "same bytes" in html


def test_cli_prints_the_index_and_refuses_an_unknown_map_method(own, tmp_path):
    out = tmp_path / "site"
    r = CliRunner().invoke(app, ["report", "--store", str(own), "--out", str(out), "--map-method", "pca"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == str(out / "index.html")
    r = CliRunner().invoke(app, ["report", "--store", str(own), "--out", str(out), "--map-method", "nope"])
    assert r.exit_code == 1 and "choose from" in r.output


def test_the_hostile_file_is_really_in_the_store(made):
    assert (made.parent / "data" / "test" / "cat" / HOSTILE).is_file()


def test_no_leaks_searches_nothing(own, tmp_path):
    out = build_report(own, out=tmp_path / "site", map_method="pca", leaks=False).index.parent
    assert "not shown (--no-leaks)" in (out / "leaks.html").read_text()
    assert not list(cache_dir(own).glob("leaks-*.json"))
    build_report(own, out=tmp_path / "site", map_method="pca")
    assert len(list(cache_dir(own).glob("leaks-*.json"))) == 1  # found once, then kept


def test_a_report_inside_the_runs_folder_is_refused_and_a_huge_manifest_is_not_read(own, tmp_path):
    from featstore.report.site.build import MANIFEST, MANIFEST_MAX_BYTES

    inside = own.with_suffix(".runs") / "site"
    with pytest.raises(ConfigError, match="inside the runs folder"):
        build_report(own, out=inside, map_method="pca")
    assert not inside.exists()  # `featstore runs` would list it as a broken run, and its advice would delete it
    out = tmp_path / "site"
    out.mkdir()
    keep = out / "keep.txt"
    keep.write_text("not the report's")
    (out / MANIFEST).write_text(json.dumps({"files": ["keep.txt"], "pad": "x" * MANIFEST_MAX_BYTES}))
    build_report(own, out=out, map_method="pca")
    assert keep.read_text() == "not the report's"  # a planted manifest over the limit is not read: nothing removed

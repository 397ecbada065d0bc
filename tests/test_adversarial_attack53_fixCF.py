"""Attack 53 #1-#7: similar shows a stored query from its own split's folder, probe checks every extractor's splits
before the first fit and keeps the finished ones, a runs folder a failed fit/probe/fewshot made is removed, similar
takes --trust-model and speaks of the store, fewshot takes --validation, report's default site folder is never the
store, and a refused --build-index makes no folder."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featstore.cli import app

from .report_stores import write_split

runner = CliRunner()


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), rgb, np.uint8)).save(path)


def _mean_rgb(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB")).reshape(-1, 3).mean(0)


@pytest.fixture
def two_roots(tmp_path):
    """Train extracted from data/v1, test (extracted again) from data/v2; v1 still holds an old test/cat/q.png (red)
    and the stored test image is v2's (blue)."""
    v1, v2 = tmp_path / "data" / "v1", tmp_path / "data" / "v2"
    train = [f"train/{c}/t{i}.png" for c in ("cat", "dog", "fox") for i in range(4)]
    for p in train:
        _png(v1 / p, (0, 200, 0))
    _png(v1 / "test/cat/q.png", (255, 0, 0))
    _png(v2 / "test/cat/q.png", (0, 0, 255))
    X = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    store = tmp_path / "f.h5"
    write_split(store, "train", X, np.repeat(np.arange(3), 4), train, v1)
    write_split(store, "test", X[:1] + 0.1, np.zeros(1, int), ["test/cat/q.png"], v2)
    return store, v2 / "test/cat/q.png"


def test_similar_html_shows_the_query_from_its_own_splits_folder(two_roots, tmp_path, monkeypatch):
    """#1: the query's picture and link came from the searched split's folder (v1's old red file); they come from
    the query's own split's source_root."""
    from featstore.experiments.similar import similar
    from featstore.report.site.similar_page import similar_html

    store, blue = two_roots
    monkeypatch.chdir(tmp_path)
    got = similar("test/cat/q.png", store, split="train", k=3)
    assert got.query_file() == str(blue) and got.query_root == str(blue.parents[2])
    page = similar_html(got, tmp_path / "q.html", store).read_text()
    query = re.findall(r'src="data:image/png;base64,([^"]+)"', page)[0]  # the first picture: the query's
    assert _mean_rgb(query)[2] > 200 and _mean_rgb(query)[0] < 50
    assert f'href="{blue.as_uri()}"' in page
    # given as the file itself, the same file (not one of that name under the searched split's folder)
    assert similar(str(blue), store, split="train", k=3).query_file() == str(blue)


def _probe_store(path: Path, bad: str | None = None) -> Path:
    """Extractors a_first and b_second with train, validation and test; ``bad``: "extractor/split" whose last row is
    NaN."""
    rng = np.random.default_rng(0)
    for name in ("a_first", "b_second"):
        for split, n in (("train", 30), ("validation", 15), ("test", 15)):
            y = np.repeat(np.arange(3), n // 3)
            X = (rng.normal(size=(n, 8)) + y[:, None]).astype(np.float32)
            if bad == f"{name}/{split}":
                X[-1, 0] = np.nan
            paths = [f"{split}/c{c}/{i}.png" for i, c in enumerate(y)]
            write_split(path, split, X, y, paths, Path("/nonexistent"), name=name)
    return path


def test_probe_checks_every_extractors_splits_before_the_first_fit(tmp_path, monkeypatch):
    """#2: a NaN row in the last extractor's test split was found after every other extractor had been probed, and
    their figures were lost. It is refused before any fit (and before the runs folder is made), naming the extractor,
    split and row, and how to probe the others."""
    from featstore.errors import StoreError
    from featstore.experiments import probe as probe_mod

    store = _probe_store(tmp_path / "f.h5", bad="b_second/test")
    fitted = []
    real = probe_mod._probe_one
    monkeypatch.setattr(probe_mod, "_probe_one", lambda fs, n, *a: fitted.append(n) or real(fs, n, *a))
    with pytest.raises(StoreError, match=r"b_second/test holds 1 row\(s\) with NaN or inf.*test/c2/14\.png") as e:
        probe_mod.probe(store, knn=False, runs=tmp_path / "new" / "runs")
    assert "probe the others: --extractor a_first" in str(e.value) and "\n" not in str(e.value)
    assert fitted == [] and not (tmp_path / "new").exists()


def test_probe_keeps_the_finished_extractors_when_a_later_one_fails(tmp_path, monkeypatch):
    """#2: any other failure of a later extractor (out of memory, a store changed meanwhile) keeps the finished
    extractors' figures: saved, printed, then one line naming the extractor that failed and the command for the rest."""
    import json

    from featstore.errors import OutputError, StoreError
    from featstore.experiments import probe as probe_mod

    store = _probe_store(tmp_path / "f.h5")
    real = probe_mod._probe_one

    def second_fails(fs, n, *a):
        if n == "b_second":
            raise StoreError("split 'test' of 'b_second' changed while it was read")
        return real(fs, n, *a)

    monkeypatch.setattr(probe_mod, "_probe_one", second_fails)
    with pytest.raises(probe_mod.ProbeStopped) as e:
        probe_mod.probe(store, knn=False, runs=tmp_path / "runs")
    saved = json.loads(Path(e.value.summary["json"]).read_text())
    assert [c["extractor"] for c in saved["cells"]] == ["a_first"] and saved["stopped"]["extractor"] == "b_second"
    assert Path(e.value.summary["png"]).is_file()
    line = str(e.value)
    assert "probe stopped at extractor 'b_second': split 'test' of 'b_second' changed" in line and "\n" not in line
    assert "--extractor b_second" in line and f"The figures of 'a_first' are saved in {e.value.summary['json']}" in line

    def full_disk(*a, **k):
        raise OutputError("cannot write the probe summary: the disk is full. Nothing was written there")

    monkeypatch.setattr(probe_mod, "write_text", full_disk)
    with pytest.raises(probe_mod.ProbeStopped, match="The figures of 'a_first' were computed but not saved") as e:
        probe_mod.probe(store, knn=False, runs=tmp_path / "full" / "runs")
    assert e.value.summary["cells"][0]["extractor"] == "a_first" and not (tmp_path / "full").exists()
    monkeypatch.undo()
    monkeypatch.setattr(probe_mod, "_probe_one", second_fails)
    got = runner.invoke(app, ["probe", "--store", str(store), "--no-knn", "--runs", str(tmp_path / "runs2")])
    assert got.exit_code == 1
    table, error = got.output.index("| a_first | linear"), got.output.index("error: probe stopped at extractor")
    assert table < error


def test_fit_fewshot_and_probe_remove_the_runs_folder_they_made_when_they_fail(tmp_path, monkeypatch):
    """#3: a fit, few-shot curve or probe that failed after making --runs (and its parents) left them, empty; they are
    removed. A runs folder that was there, or that holds anything, is kept."""
    from featstore.errors import ConfigError, StoreError
    from featstore.experiments import probe as probe_mod
    from featstore.experiments.fewshot import fewshot
    from featstore.experiments.fit import fit

    store = _probe_store(tmp_path / "f.h5")
    with pytest.raises(ConfigError, match="cannot be fitted"):
        fewshot(store, "knn", {"n_neighbors": 50}, shots=[1], trials=1, extractor="a_first", runs=tmp_path / "a/runs")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="cannot be fitted"):
        fit(store, "knn", {"n_neighbors": [500]}, extractor="a_first", runs=tmp_path / "b/runs")
    assert not (tmp_path / "b").exists()

    def fails(*a):
        raise StoreError("the store changed while it was read")

    monkeypatch.setattr(probe_mod, "_probe_one", fails)
    with pytest.raises(StoreError, match="changed"):
        probe_mod.probe(store, knn=False, runs=tmp_path / "c/runs")
    assert not (tmp_path / "c").exists()
    kept = tmp_path / "kept" / "runs"
    kept.mkdir(parents=True)
    with pytest.raises(StoreError, match="changed"):
        probe_mod.probe(store, knn=False, runs=kept)
    assert kept.is_dir()  # there before: never removed


def test_similar_takes_trust_model_and_speaks_of_the_stores_extractor(tmp_path, monkeypatch):
    """#4: a new image against a store extracted from a legacy .h5 model said "pass --trust-model", which similar did
    not take, then "The run's features ...; pass --weights PATH to give that file" (no run; that file was where it
    was). Now similar takes --trust-model, the line is the model's own, and a moved file is said of the store."""
    import keras

    from featstore import ExtractorConfig, extract

    from .conftest import write_images

    write_images(tmp_path / "data", "train", {"cat": 3, "dog": 3}, seed=1, size=32)
    (query,) = write_images(tmp_path / "new", "x", {"q": 1}, seed=5, size=32)
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, activation="softmax", name="head"),
        ]
    )
    model.save(tmp_path / "own.h5")
    store = tmp_path / "f.h5"
    extract(tmp_path / "data", "train", store, ExtractorConfig(model=str(tmp_path / "own.h5"), trust_model=True))
    args = ["similar", str(query), "--store", str(store), "-k", "2"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "is a legacy .h5 model" in refused.output and "--trust-model" in refused.output
    assert "run" not in refused.output.replace("can run code", "") and "--weights" not in refused.output
    found = runner.invoke(app, [*args, "--trust-model"])
    assert found.exit_code == 0 and "train/cat/img_000" in found.output, found.output
    (tmp_path / "own.h5").rename(tmp_path / "moved.h5")
    moved = runner.invoke(app, [*args, "--trust-model"])
    assert moved.exit_code == 1 and "The features of extractor 'own' of" in moved.output
    assert "run's" not in moved.output and moved.output.count("\n") == 1, moved.output
    again = runner.invoke(app, [*args, "--trust-model", "--weights", str(tmp_path / "moved.h5")])
    assert again.exit_code == 0, again.output


def test_fewshot_takes_validation_for_the_heads_early_stopping(tmp_path):
    """#5: `fewshot --clf dense --test validation` was refused naming --validation, which fewshot lacked. fewshot takes
    --validation (a named split, or none: the head stops on its training loss); a refusal names that option, before
    any runs folder is made."""
    import json

    from featstore.errors import ConfigError, StoreError
    from featstore.experiments.fewshot import fewshot

    store = _probe_store(tmp_path / "f.h5")
    base = ["fewshot", "--store", str(store), "--extractor", "a_first", "--clf", "dense", "--shots", "1"]
    base += ["--trials", "1", "--runs", str(tmp_path / "new" / "runs")]
    got = runner.invoke(app, [*base, "--test", "validation"])
    assert got.exit_code == 1 and "--validation 'validation' is also --test" in got.output
    assert "--validation none" in got.output and not (tmp_path / "new").exists()
    with pytest.raises(StoreError, match="--validation 'val': extractor 'a_first' has no complete 'val' split.*none"):
        fewshot(store, "dense", extractor="a_first", shots=[1], trials=1, validation="val", runs=tmp_path / "new/runs")
    with pytest.raises(ConfigError, match="is also --train"):
        fewshot(store, "dense", extractor="a_first", shots=[1], trials=1, validation="train")
    ok = runner.invoke(app, [*base, "--param", "epochs=1", "--test", "validation", "--validation", "none", "--json"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.output[ok.output.index("{") :])
    assert summary["splits"]["validation"] is None and summary["splits"]["test"] == "validation"
    assert any("early-stops on its training loss" in n for n in summary["notes"])


def test_reports_default_folder_is_never_the_store_and_a_refusal_makes_nothing(two_roots, tmp_path):
    """#6: `report --store s.report` took the store itself as its default site folder, said "--out s.report is not a
    folder" (no --out was given) and had made s.report.cache first. The default is never the store; a default folder
    that cannot be written into is said as the default (with --out DIR), before any cache is made; a cache refused
    after the folder was made removes that folder."""
    import shutil

    from featstore.errors import FeatstoreError
    from featstore.report.site.build import build_report, default_out

    store, _ = two_roots
    named = tmp_path / "s.report"
    shutil.copy(store, named)
    assert default_out(named) == tmp_path / "s.report.report"
    assert build_report(named, map_method="pca").index == tmp_path / "s.report.report" / "index.html"

    (tmp_path / "f.report").write_text("notes")
    with pytest.raises(FeatstoreError) as e:
        build_report(store, map_method="pca")
    line = str(e.value)
    assert line.startswith(f"the report's default folder {tmp_path / 'f.report'} is not a folder")
    assert "give --out DIR" in line and "--out " + str(tmp_path) not in line
    assert not (tmp_path / "f.h5.cache").exists()
    with pytest.raises(FeatstoreError, match=r"^--out .*f\.report is not a folder"):  # named: said as named
        build_report(store, out=tmp_path / "f.report", map_method="pca")

    (tmp_path / "f.report").unlink()
    (tmp_path / "f.h5.cache").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FeatstoreError, match="link"):
        build_report(store, map_method="pca")
    assert not (tmp_path / "f.report").exists()  # made for the report, empty: removed


def test_build_index_of_a_refused_split_makes_no_folder(tmp_path):
    """#7: `similar --build-index` on a split not complete (or with NaN rows, or under 2 rows) left
    <store>.index/<extractor>/<split>/ behind, empty. The split's attributes are checked first; a refusal met while
    reading removes the levels made; a level that was there is kept."""
    from featstore.errors import StoreError
    from featstore.experiments.similar_index import build_similarity_index
    from featstore.store.locking import StoreFile
    from featstore.store.writer import SplitWriter, synthetic_attrs

    X = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    attrs = {"class_names": ["a", "b", "c"], "source_root": "/nonexistent", "n_images": 12, "n_ignored": 0}
    attrs |= {"listing_sha256": "arrays:12:train", "batch_size": 6, "compression": "none"}
    w = SplitWriter(StoreFile(tmp_path / "f.h5"), ["synthetic"], "train")
    w.prepare([synthetic_attrs(X.shape[1:], "float32", "synthetic")], attrs, overwrite=True)
    w.commit([X], np.repeat(np.arange(3), 2).astype(np.int32), [f"train/{i}.png" for i in range(6)], [], 6)
    got = runner.invoke(app, ["similar", "train/0.png", "--store", str(tmp_path / "f.h5"), "--build-index"])
    assert got.exit_code == 1 and "is not complete" in got.output
    assert not (tmp_path / "f.h5.index").exists()

    store = _probe_store(tmp_path / "g.h5", bad="a_first/train")
    with pytest.raises(StoreError, match="NaN or inf"):
        build_similarity_index(store, "a_first", "train")
    assert not (tmp_path / "g.h5.index").exists()
    (tmp_path / "g.h5.index").mkdir()
    with pytest.raises(StoreError, match="NaN or inf"):
        build_similarity_index(store, "a_first", "train")
    assert os.listdir(tmp_path / "g.h5.index") == []  # there before: kept; the levels made below it: removed
    build_similarity_index(store, "b_second", "train")
    assert (tmp_path / "g.h5.index" / "b_second" / "train" / "index.json").is_file()


def test_a_refusal_of_one_split_twice_names_the_options_in_play(tmp_path):
    """#5, the same root elsewhere: `fewshot --train test --test test` was told "--train, --validation and --test
    must be three different splits; got 'test', None, 'test'"; fit with --validation none likewise."""
    from featstore.errors import ConfigError
    from featstore.experiments.fewshot import fewshot
    from featstore.experiments.fit import fit

    store = _probe_store(tmp_path / "f.h5")
    with pytest.raises(ConfigError, match=r"^--train and --test must be different splits; got 'test', 'test'$"):
        fewshot(store, "logreg", extractor="a_first", train="test", test="test", runs=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"^--train and --test must be different splits; got 'train', 'train'$"):
        fit(store, "logreg", extractor="a_first", validation="none", test="train", runs=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"^--train, --validation and --test must be three different splits"):
        fit(store, "logreg", extractor="a_first", validation="test", runs=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()

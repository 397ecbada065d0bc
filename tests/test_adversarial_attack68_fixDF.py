"""Attack 68 findings 2, 8, 9 and 10 (helper fixDF): the `runs` group's own options reach its sub-commands (or are
refused when given on both sides), a colleague's link at <runs>/compare.png no longer blocks the comparison, --jobs
sets n_jobs only where it has an effect, and a parameter value given twice is refused. Synthetic stores."""

from __future__ import annotations

import json
import logging
import os
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit, sticky
from featstore.cli import app
from featstore.errors import ConfigError, OutputError
from featstore.experiments.classifiers import build_classifier, get_classifier, parse_clf_params, parse_params
from featstore.experiments.selection import head_threads
from featstore.runs.files import output_path
from featstore.store import writer
from featstore.store.writer import synthetic_attrs

COLLEAGUE, FOLDER_OWNER = 54321, 54322
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to made-up users needs root")


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _store(path, seed=1):
    rng = np.random.default_rng(seed)
    for split, n in (("train", 30), ("validation", 15), ("test", 15)):
        y = (np.arange(n) % 3).astype(np.int32)
        X = (rng.normal(size=(n, 5)) + y[:, None]).astype(np.float32)
        writer.write_arrays(path, "syn", split, X, y, list("abc"), attrs=synthetic_attrs(X.shape[1:], model="syn"))
    return path


@pytest.fixture
def two_runs(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "s.runs"
    a, b = fit(store, "logreg", runs=runs), fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    return store, runs, a.id, b.id


# ------------------------------------------------------------------ finding 2: the group's --json, --store, --runs
def test_the_groups_json_reaches_show_compare_and_evaluate(two_runs):
    store, runs, a, b = two_runs
    group = ["runs", "--store", store, "--runs", runs, "--json"]
    shown = cli(*group, "show", a)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == a, shown.output
    compared = cli(*group, "compare", a, b)
    assert compared.exit_code == 0 and {r["id"] for r in json.loads(compared.stdout)["runs"]} == {a, b}, compared.output
    evaluated = cli(*group, "evaluate", a, "--split", "validation")
    assert json.loads(evaluated.stdout)["run"] == a, evaluated.output
    both = cli(*group, "show", a, "--json")  # the flag on both sides: one wish, as `--json --json` is
    assert both.exit_code == 0 and json.loads(both.stdout)["id"] == a, both.output
    text = cli("runs", "--store", store, "--runs", runs, "show", a)  # the group's store alone still reaches it
    assert text.exit_code == 0 and text.stdout.startswith(f"run {a}"), text.output


@pytest.mark.parametrize("option", ["--store", "--runs"])
def test_a_value_option_on_both_sides_is_refused_naming_both(two_runs, tmp_path, option):
    store, runs, a, _ = two_runs
    other = tmp_path / "elsewhere"
    given = {"--store": store, "--runs": runs}
    rest = [x for k, v in given.items() if k != option for x in (k, v)]
    got = cli("runs", option, other, "show", a, option, given[option], *rest)
    assert got.exit_code == 1, got.output
    line = got.output.strip()
    assert line.count("\n") == 0 and "error: " + option in line, line
    assert f"`featstore runs` ({other})" in line and f"`featstore runs show` ({given[option]})" in line, line


def test_both_sides_values_are_quoted_and_escaped_as_repeated_ones_are(two_runs, tmp_path):
    store, runs, a, _ = two_runs
    odd = tmp_path / "my runs\x1b[31m red"  # a space and a terminal escape in the folder's name
    got = cli("runs", "--runs", odd, "show", a, "--runs", runs, "--store", store)
    assert got.exit_code == 1, got.output
    line = got.output.strip()
    assert "\x1b" not in line and "'" in line and "my runs" in line, repr(line)


# ------------------------------------------------------------------ finding 8: a link at <runs>/compare.png
def _shared(runs, monkeypatch):
    """``runs`` as a team's runs folder (another owner's, mode 1777), the suite's root standing for an ordinary user."""
    monkeypatch.setattr(sticky, "privileged", lambda: False)
    os.chown(runs, FOLDER_OWNER, -1)
    runs.chmod(0o1777)


@needs_root
def test_a_colleagues_link_at_compare_png_names_its_owner_and_out(two_runs, tmp_path, monkeypatch):
    store, runs, a, b = two_runs
    _shared(runs, monkeypatch)
    link = runs / "compare.png"
    link.symlink_to(tmp_path / "her_chart.png")
    os.lchown(link, COLLEAGUE, -1)
    got = cli("runs", "compare", a, b, "--store", store, "--runs", runs)
    assert got.exit_code == 1, got.output
    assert f"{a} vs {b}" in got.stdout, got.output  # the comparison is computed and printed first
    line = got.stderr.strip()
    assert line.count("\n") == 0 and "uid 54321's" in line and "Remove it" not in line, line
    assert "pass --out PATH (a path of yours) to write it elsewhere, or ask uid 54321 to remove it." in line, line
    assert not (tmp_path / "her_chart.png").exists()  # nothing written through the link
    out = tmp_path / "mine.png"
    again = cli("runs", "compare", a, b, "--store", store, "--runs", runs, "--out", out)
    assert again.exit_code == 0 and out.is_file(), again.output  # the fix the line names works


@needs_root
def test_a_colleagues_file_at_compare_png_names_out_too(two_runs, tmp_path, monkeypatch):
    """Attack 72 #7: his regular file there got "write to another path of yours", never naming --out (his link did)."""
    store, runs, a, b = two_runs
    _shared(runs, monkeypatch)
    (runs / "compare.png").write_bytes(b"his")
    os.chown(runs / "compare.png", COLLEAGUE, -1)
    got = cli("runs", "compare", a, b, "--store", store, "--runs", runs)
    assert got.exit_code == 1 and f"{a} vs {b}" in got.stdout, got.output
    line = got.stderr.strip()
    assert "uid 54321's" in line and "pass --out PATH.png (a path of yours)" in line, line
    assert (runs / "compare.png").read_bytes() == b"his"


def test_an_own_link_at_compare_png_is_shown_after_the_comparison_with_out(two_runs, tmp_path):
    store, runs, a, b = two_runs
    (runs / "compare.png").symlink_to(tmp_path / "x.png")
    got = cli("runs", "compare", a, b, "--store", store, "--runs", runs)
    assert got.exit_code == 1 and f"{a} vs {b}" in got.stdout, got.output
    assert "is a link" in got.stderr and "Remove it and retry" in got.stderr and "--out PATH" in got.stderr
    with pytest.raises(OutputError, match=r"Remove it and retry, or pass --out PATH"):
        output_path(runs, "compare.png", "--out")


# ------------------------------------------------------------------ finding 9: --jobs and logreg's n_jobs
def test_jobs_leave_logregs_n_jobs_alone_and_set_sgds(tmp_path, caplog):
    logreg = build_classifier("logreg")[-1]
    with head_threads(logreg, 4):
        assert logreg.get_params()["n_jobs"] is None
    sgd = build_classifier("sgd")[-1]
    with head_threads(sgd, 4):
        assert sgd.n_jobs == 4  # sgd's one-vs-rest classes still use the threads
    store = _store(tmp_path / "s.h5")
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        fit(store, "logreg", jobs=4, runs=tmp_path / "runs")
    assert not [r for r in caplog.records if "n_jobs" in r.getMessage()], caplog.text


# ------------------------------------------------------------------ finding 10: a value given twice
@pytest.mark.parametrize(
    ("clf", "items", "shown"),
    [("logreg", ["C=1", "C=1.0"], "(C=1, C=1.0)"), ("svm", ["gamma=0.1", "gamma=0.10"], "(gamma=0.1, gamma=0.10)")],
)
def test_a_value_given_twice_after_parsing_is_refused(clf, items, shown):
    with pytest.raises(ConfigError, match=r"value .* twice \(.*give each value once$") as err:
        parse_params(get_classifier(clf), items)
    assert shown in str(err.value)
    with pytest.raises(ConfigError, match="twice"):
        parse_clf_params([clf], [f"{clf}:{i}" for i in items])  # sweep's --param
    assert parse_params(get_classifier(clf), items[:1])  # once: taken


def test_fit_refuses_a_repeated_value_before_any_fit(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    got = cli("fit", "--clf", "logreg", "--param", "C=1", "--param", "C=1.0", "--store", store, "--runs", runs)
    assert got.exit_code == 1 and got.output.count("\n") == 1, got.output
    assert "--param gives logreg's C the value 1.0 twice" in got.output, got.output
    with pytest.raises(ConfigError, match=r"parameter C for logreg lists 1 twice"):
        fit(store, "logreg", {"C": [1.0, 1]}, runs=runs)  # Python's params: 1 and 1.0 are one setting
    assert not runs.exists() or not any(runs.iterdir())
    rec = fit(store, "logreg", {"C": [1.0]}, runs=runs)
    recorded = json.loads((runs / rec.id / "run.json").read_text())
    assert "chosen_on" not in recorded.get("selection", {}), recorded.get("selection")  # one setting: none chosen

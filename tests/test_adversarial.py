"""Adversarial inputs, one table per kind: add a row to add a case.

- ``RUN_FOLDER_CASES``: damaged or crafted run folders (the attacker rewrites run.json's sha256 values
  too). Each row damages one run (``victim``: a fit by classifier name, or "ensemble") of a copy of a
  small runs folder; a damaged run.json (or a file it names that is missing or not a regular file) must be
  reported as broken with the message fragment (``featstore runs``, ``get_run``, ``show``, ``evaluate``,
  ``ensemble``); with outcome "used", damaged file contents (which the listing does not read) leave the run
  listed, and every command that uses it refuses it with the fragment (``get_run``, ``show``, ``evaluate``,
  ``ensemble``); with outcome "show", it is listed but refused by ``runs show``; with outcome "apply", listed
  but refused by ``runs evaluate`` and ``predict`` when its model meets the features. The other runs keep
  working and nothing is written outside the runs folder.
- ``HOSTILE_ARTIFACT_CASES``: crafted skops models (the attacker rewrote run.json's sha256 too). Each is
  refused by ``runs evaluate``, ``predict`` and ``runs show``, and nothing it holds is executed.
- ``CRAFTED_STORE_CASES``: damaged or crafted stores (id, damage(h5py.File), message fragment): info, check,
  fit and resume each give one clear message naming the problem; a refused resume leaves the file untouched.
- ``HOSTILE_FOLDER_CASES`` (in ``tests/adversarial_images.py``): hostile image folders (links, FIFOs, odd
  names, bad files); a full extraction gives exactly the expected rows, failures and labels.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import (
    ExtractorConfig,
    FeatstoreError,
    FeatureStore,
    StoreError,
    ensemble,
    evaluate_run,
    extract,
    fit,
    get_run,
    list_runs,
    predict,
    show_run,
)
from featstore.cli import app
from featstore.errors import OutputError
from featstore.models.weights import sha256_file
from featstore.report.tables import store_tree
from featstore.store.check import check_store

from .adversarial_images import HOSTILE_FOLDER_CASES
from .conftest import write_images


# ------------------------------------------------------------------ shared helpers and fixtures
@pytest.fixture(scope="module")
def runs_src(store, tmp_path_factory) -> Path:
    """A runs folder with five fits (logreg, random_forest and svm are victims; knn, sgd) and an ensemble of knn + sgd (the ensemble victim)."""
    root = tmp_path_factory.mktemp("adversarial") / "runs"
    small = {"random_forest": {"n_estimators": [3]}, "svm": {"calibration_folds": [2]}}
    for clf in ("logreg", "knn", "sgd", "random_forest", "svm"):
        fit(store, clf, small.get(clf), runs=root)
    ensemble([r["id"] for r in list_runs(store, root) if r["clf"] in ("knn", "sgd")], runs=root)
    return root


class Runs(NamedTuple):
    """A private copy of ``runs_src``: its root and the ids of its runs by classifier."""

    root: Path
    ids: dict[str, str]  # "logreg", "knn", "sgd", "ensemble" -> run id

    def folder(self, clf: str) -> Path:
        return self.root / self.ids[clf]


@pytest.fixture
def runs(runs_src, store, tmp_path) -> Runs:
    """Copy of the shared runs folder, safe to damage."""
    root = tmp_path / "runs"
    shutil.copytree(runs_src, root, symlinks=True)
    (tmp_path / "outside").mkdir()  # what a hostile run folder aims at; must stay empty
    return Runs(root, {r["clf"]: r["id"] for r in list_runs(store, root)})


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _rewrite(run_dir: Path, record: dict, **changes) -> None:
    """Write run.json with ``changes`` applied (as an attacker who can edit the folder would)."""
    (run_dir / "run.json").write_text(json.dumps({**record, **changes}))


def _recorded_as(run_dir: Path, record: dict, model: Path) -> None:
    """Write run.json recording ``model``'s sha256 and size as the artifact's (as an attacker who can edit it would)."""
    artifact = {**record["artifact"], "sha256": sha256_file(model), "size": model.stat().st_size}
    _rewrite(run_dir, record, artifact=artifact)


def _outside(run_dir: Path) -> Path:
    return run_dir.parent.parent / "outside"


def cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ crafted and damaged run folders
def _garbage(run_dir: Path, record: dict) -> None:
    (run_dir / "model.skops").write_bytes(os.urandom(300))


def _garbage_with_sha(run_dir: Path, record: dict) -> None:
    _garbage(run_dir, record)
    _recorded_as(run_dir, record, run_dir / "model.skops")


def _truncate_predictions(run_dir: Path, record: dict, fix_sha: bool = False) -> None:
    p = run_dir / "predictions.npz"
    p.write_bytes(p.read_bytes()[:200])
    if fix_sha:
        _rewrite(run_dir, record, predictions_sha256=sha256_file(p))


def _edit_predictions(run_dir: Path, record: dict) -> None:
    """Make every stored prediction right: a silently perfect ensemble unless the checksum is checked."""
    with np.load(run_dir / "predictions.npz") as z:
        data = {k: z[k] for k in z.files}
    for split in record["predictions"]:
        y = data[f"{split}__labels"]
        data[f"{split}__proba"] = np.eye(data[f"{split}__proba"].shape[1])[y]
    np.savez(run_dir / "predictions.npz", **data)


def _escaping_metrics_key(run_dir: Path, record: dict) -> None:
    target = os.path.relpath(_outside(run_dir) / "evil", run_dir)  # ../../outside/evil
    _rewrite(
        run_dir,
        record,
        metrics={
            **record["metrics"],
            f"x/{target}": record["metrics"]["test"],
            "../../outside/y": record["metrics"]["test"],
        },
    )


def _symlinked_folder(run_dir: Path, record: dict) -> None:
    real = _outside(run_dir).parent / "elsewhere"
    shutil.move(run_dir, real)
    run_dir.symlink_to(real)


def _png_link(run_dir: Path, record: dict) -> None:
    (run_dir / "confusion_test.png").symlink_to(_outside(run_dir) / "victim.txt")


def _artifact_link(run_dir: Path, record: dict) -> None:
    other = next(d for d in run_dir.parent.iterdir() if d.name.startswith("knn"))
    (run_dir / "model.skops").unlink()
    (run_dir / "model.skops").symlink_to(other / "model.skops")
    _recorded_as(run_dir, record, other / "model.skops")


def _reseal(run_dir: Path) -> None:
    """Recompute every sha256 run.json records, as an attacker who can edit the folder would."""
    rec = _record(run_dir)
    if "artifact" in rec:
        rec["artifact"]["sha256"] = sha256_file(run_dir / rec["artifact"]["file"])
        rec["artifact"]["size"] = (run_dir / rec["artifact"]["file"]).stat().st_size  # recorded since attack 35 #3
    rec["predictions_sha256"] = sha256_file(run_dir / "predictions.npz")
    (run_dir / "run.json").write_text(json.dumps(rec))


def _rewrite_zip(path: Path, replace: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> None:
    """Rewrite a zip with some members replaced (name -> bytes), then reseal its run folder."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in {**members, **replace}.items():
            z.writestr(name, data)
    _reseal(path.parent)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _schema_node(path: Path, cls: str, has: str | None = None) -> tuple[dict, dict]:
    """(schema, first node of class ``cls`` in depth-first order, holding attribute ``has`` if given)."""
    with zipfile.ZipFile(path) as z:
        schema = json.loads(z.read("schema.json"))
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("__class__") == cls and (has is None or has in node.get("content", {}).get("content", {})):
                return schema, node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    raise AssertionError(f"no {cls} in {path}")


def _skops_array(cls: str, key: str, edit: Callable[[np.ndarray], np.ndarray], has: str | None = None):
    """Damage: replace array ``key`` of the first ``cls`` in the run's model.skops by ``edit(array)``."""

    def damage(run_dir: Path, record: dict) -> None:
        path = run_dir / "model.skops"
        _, node = _schema_node(path, cls, has)
        member = node["content"]["content"][key]["file"]
        with zipfile.ZipFile(path) as z:
            a = np.load(io.BytesIO(z.read(member)))
        _rewrite_zip(path, {member: _npy(edit(a.copy()))}, zipfile.ZIP_STORED)

    return damage


def _skops_json(cls: str, key: str, value):
    """Damage: set JSON attribute ``key`` of the first ``cls`` in the run's model.skops to ``value``."""

    def damage(run_dir: Path, record: dict) -> None:
        path = run_dir / "model.skops"
        schema, node = _schema_node(path, cls)
        node["content"]["content"][key].update(
            content=json.dumps(value), __id__=987654321
        )  # a new id: skops reuses values by id
        _rewrite_zip(path, {"schema.json": json.dumps(schema).encode()}, zipfile.ZIP_STORED)

    return damage


def _node(field: str, value):
    """Edit of a tree's node array: node 0's ``field`` set to ``value``."""

    def edit(nodes: np.ndarray) -> np.ndarray:
        nodes[field][0] = value
        return nodes

    return edit


def _both_children(value):
    return lambda nodes: _node("right_child", value)(_node("left_child", value)(nodes))


def _several(*damages):
    def damage(run_dir: Path, record: dict) -> None:
        for d in damages:
            d(run_dir, _record(run_dir))

    return damage


def _predictions(key: str, make: Callable[[np.ndarray], bytes], compression: int = zipfile.ZIP_STORED):
    """Damage: replace member ``key`` of predictions.npz by ``make(old array)`` (resealed)."""

    def damage(run_dir: Path, record: dict) -> None:
        path = run_dir / "predictions.npz"
        with np.load(path) as z:
            old = z[key]
        _rewrite_zip(path, {f"{key}.npy": make(old)}, compression)

    return damage


def _skops_schema_bomb(run_dir: Path, record: dict) -> None:
    """schema.json padded with 65 MiB of spaces: 65 KiB deflated (the attacker's was 2 GB)."""
    path = run_dir / "model.skops"
    with zipfile.ZipFile(path) as z:
        schema = z.read("schema.json")
    _rewrite_zip(path, {"schema.json": schema[:-1] + b" " * (65 << 20) + schema[-1:]})


def _npy_header_lies(old: np.ndarray) -> bytes:
    """A .npy of the right shape whose data is cut short: numpy would allocate for rows that are not there."""
    return _npy(old)[:-8]


class Case(NamedTuple):
    """One crafted run folder: how to damage it, and what must be said about it."""

    id: str
    damage: Callable[[Path, dict], None]  # (run folder, its run.json) -> None
    expect: str  # regular expression found in the error and in `featstore runs`
    outcome: str = "broken"  # "broken": listed as broken, unusable; "used": listed (the listing reads run.json only),
    # unusable; "show": listed, but `runs show` refuses; "apply": listed, but `runs evaluate` and `predict` refuse once
    # the model meets the features
    victim: str = "logreg"  # which run to damage: a fit by classifier (logreg, random_forest, svm), or ensemble


RUN_FOLDER_CASES = [
    Case("run_json_not_json", lambda d, r: (d / "run.json").write_text("{not json"), "is not valid JSON"),
    Case("run_json_not_an_object", lambda d, r: (d / "run.json").write_text("[1, 2]"), "is not a JSON object"),
    Case(
        "run_json_lacks_a_key",
        lambda d, r: _rewrite(d, {k: v for k, v in r.items() if k != "class_names"}),
        "lacks class_names",
    ),
    Case("run_json_wrong_type", lambda d, r: _rewrite(d, r, metrics="high"), "metrics must be dict"),
    Case("run_json_missing", lambda d, r: (d / "run.json").unlink(), r"run record .*run.json is missing"),
    Case(
        "input_size_huge",
        lambda d, r: _rewrite(d, r, extractor_attrs={**r["extractor_attrs"], "input_size": 20000}),
        "input_size 20000 is not an image side featstore uses",
    ),
    Case(
        "run_json_not_a_file",
        lambda d, r: ((d / "run.json").unlink(), (d / "run.json").mkdir()),
        "is not a regular file",
    ),
    Case("absolute_id", lambda d, r: _rewrite(d, r, id=str(_outside(d) / "evil")), "is not a valid run id"),
    Case("id_of_another_folder", lambda d, r: _rewrite(d, r, id="logreg-000000"), "not its folder's name"),
    Case("metrics_key_leaves_the_folder", _escaping_metrics_key, "invalid split or run names"),
    Case(
        "confusion_matrix_wrong_shape",
        lambda d, r: _rewrite(d, r, metrics={"test": {**r["metrics"]["test"], "confusion_matrix": [[1]]}}),
        "3x3 integer confusion matrix",
    ),
    Case(
        "garbage_skops",
        _garbage,
        r"run artifact .*model.skops (has sha256 \w+|is [\d,]+ bytes), the run recorded [\w,]+: it was changed after the fit",
        outcome="used",
    ),
    Case("garbage_skops_with_its_sha256", _garbage_with_sha, "is not a readable skops file", outcome="used"),
    Case("skops_missing", lambda d, r: (d / "model.skops").unlink(), r"run artifact .*model.skops is missing"),
    Case("skops_is_a_link", _artifact_link, "is not a regular file"),
    Case(
        "artifact_name_leaves_the_folder",
        lambda d, r: _rewrite(d, r, artifact={**r["artifact"], "file": "../../outside/m.skops"}),
        "which is not a plain file name",
    ),
    Case(
        "artifact_record_not_featstore",
        lambda d, r: _rewrite(d, r, artifact={"file": "model.pkl", "format": "pickle"}),
        "is not one featstore writes",
    ),
    Case(
        "predictions_edited",
        _edit_predictions,
        r"stored predictions .*predictions.npz has sha256 \w+, .* changed after the fit",
        outcome="used",
    ),
    Case(
        "predictions_truncated",
        _truncate_predictions,
        "predictions.npz has sha256 .* changed after the fit",
        outcome="used",
    ),
    Case(
        "predictions_truncated_with_sha256",
        lambda d, r: _truncate_predictions(d, r, fix_sha=True),
        "predictions.npz cannot be read",
        outcome="used",
    ),
    Case(
        "predictions_checksum_missing",
        lambda d, r: _rewrite(d, {k: v for k, v in r.items() if k != "predictions_sha256"}),
        "lacks predictions_sha256",
    ),
    Case("run_folder_is_a_link", _symlinked_folder, "is a link or not a folder"),
    Case("png_is_a_link_outside", _png_link, "is a link or leads outside", outcome="show"),
    Case(
        "ensemble_member_leaves_the_folder",
        lambda d, r: _rewrite(d, r, members=["../outside", r["members"][1]]),
        "invalid split or run names",
        victim="ensemble",
    ),
    Case(
        "ensemble_weights_do_not_match",
        lambda d, r: _rewrite(d, r, weights=[1.0]),
        "one finite non-negative number per member",
        victim="ensemble",
    ),
    Case(
        "ensemble_weight_nan",
        lambda d, r: _rewrite(d, r, weights=[float("nan"), 1.0]),
        "weights must be one finite",
        victim="ensemble",
    ),
    # records that passed validation and crashed later (predict: "max() arg is an empty sequence", KeyError 'model')
    Case(
        "ensemble_without_members",
        lambda d, r: _rewrite(d, r, members=[], weights=[]),
        "an ensemble has at least two members, this one 0",
        victim="ensemble",
    ),
    Case(
        "extractor_attrs_only_the_fingerprint",
        lambda d, r: _rewrite(d, r, extractor_attrs={"fingerprint": r["fingerprint"]}),
        "extractor_attrs .* lacks model, layer, input_size, pooling, dtype, weights, feature_shape",
    ),
    Case(
        "calibration_temperature_negative",
        lambda d, r: _rewrite(d, r, calibration={"method": "temperature", "T": -1.0, "input": "probabilities"}),
        "calibration is not usable: a temperature calibration needs a finite positive T",
    ),
    Case(
        "calibration_unknown_method",
        lambda d, r: _rewrite(d, r, calibration={"method": "isotonic"}),
        "calibration is not usable: its method must be one of temperature, none",
    ),
    Case(
        "interval_of_strings",
        lambda d, r: _rewrite(
            d, r, metrics={**r["metrics"], "test": {**r["metrics"]["test"], "accuracy_ci": {"low": "a", "high": "b"}}}
        ),
        "accuracy_ci must be finite numbers",
    ),
    Case(
        "reliability_bins_crafted",
        lambda d, r: _rewrite(
            d, r, metrics={**r["metrics"], "test": {**r["metrics"]["test"], "reliability": [{"low": 0, "high": 9}]}}
        ),
        "reliability must be finite numbers",
    ),
    # crafted models of allowed types whose arrays would make compiled code crash or hang (rf_tree_nodes.py, resealed)
    Case(
        "tree_children_out_of_bounds",
        _skops_array("Tree", "nodes", _both_children(10**12)),
        "node 0 has children 1000000000000",
        victim="random_forest",
        outcome="used",
    ),
    Case(
        "tree_children_loop",
        _skops_array("Tree", "nodes", _both_children(0)),
        "node 0 has children 0 and 0",
        victim="random_forest",
        outcome="used",
    ),
    Case(
        "tree_feature_out_of_range",
        _skops_array("Tree", "nodes", _node("feature", 10**9)),
        "splits on feature 1000000000",
        victim="random_forest",
        outcome="used",
    ),
    Case(
        "tree_threshold_nan",
        _skops_array("Tree", "nodes", _node("threshold", np.nan)),
        "threshold is not finite",
        victim="random_forest",
        outcome="used",
    ),
    Case(
        "tree_node_count_past_its_nodes",
        _skops_json("Tree", "node_count", 10**6),
        "node_count 1000000 is not the length",
        victim="random_forest",
        outcome="used",
    ),
    Case(
        "tree_values_of_another_shape",
        _skops_array("Tree", "values", lambda v: np.zeros((len(v), 1, 7))),
        r"values of shape \(\d+, 1, 7\)",
        victim="random_forest",
        outcome="used",
    ),
    Case(
        "svc_dual_coef_too_small",
        _skops_array("SVC", "_dual_coef_", lambda a: a[:, :1].copy(), has="support_vectors_"),
        "array sizes disagree",
        victim="svm",
        outcome="used",
    ),
    Case(
        "svc_intercept_empty",
        _skops_array("SVC", "_intercept_", lambda a: a[:0].copy(), has="support_vectors_"),
        "array sizes disagree",
        victim="svm",
        outcome="used",
    ),
    Case(
        "svc_class_count_negative",
        _skops_array("SVC", "_n_support", lambda a: a * np.array([-1, 1, 2], dtype=a.dtype), has="support_vectors_"),
        "class counts",
        victim="svm",
        outcome="used",
    ),
    Case(
        "svm_temperature_nan",
        _skops_json("TemperedSVC", "temperature_", float("nan")),
        "temperature nan is not a finite positive number",
        outcome="apply",
        victim="svm",
    ),
    Case(
        "svm_temperature_negative",
        _skops_json("TemperedSVC", "temperature_", -1.0),
        "temperature -1.0 is not a finite positive number",
        outcome="apply",
        victim="svm",
    ),
    Case(
        "svm_temperature_tiny",  # finite and positive, but every probability NaN (decision / 1e-300 overflows)
        _skops_json("TemperedSVC", "temperature_", 1e-300),
        "temperature 1e-300 lies outside \\[0.01, 100\\]",
        outcome="apply",
        victim="svm",
    ),
    Case(
        "svm_svc_of_ovr_shape",
        _skops_json("SVC", "decision_function_shape", "ovr"),
        "decision_function_shape 'ovr', not 'ovo'",
        outcome="apply",
        victim="svm",
    ),
    # allowed types whose state does not fit the features: refused when applied (bad_state.py)
    Case(
        "scaler_mean_wrong_length",
        _skops_array("StandardScaler", "mean_", lambda a: np.zeros(7)),
        "does not fit these features",
        outcome="apply",
    ),
    Case(
        "scaler_of_another_width",
        _several(
            *(_skops_array("StandardScaler", k, lambda a: np.ones(7)) for k in ("mean_", "var_", "scale_")),
            _skops_json("StandardScaler", "n_features_in_", 7),
        ),
        "does not fit these features .*expecting 7 features",
        outcome="apply",
    ),
    Case(
        "logreg_coefficients_nan",
        _skops_array("AgreeingLogisticRegression", "coef_", lambda a: np.full_like(a, np.nan)),
        "gives NaN, inf, probabilities outside",
        outcome="apply",
    ),
    Case(
        "logreg_classes_outside_the_store",
        _skops_array("AgreeingLogisticRegression", "classes_", lambda a: np.array([0, 1, 7], dtype=a.dtype)),
        "are not distinct labels of the 3 store classes",
        outcome="apply",
    ),
    # zip bombs and crafted predictions.npz (zip_bombs.py, ensemble_preds.py; resealed)
    Case("skops_schema_bomb", _skops_schema_bomb, "member 'schema.json' declares .* a zip bomb", outcome="used"),
    Case(
        "predictions_member_bomb",
        _predictions("test__proba", lambda a: _npy(np.zeros(((65 << 20) // 24, 3))), zipfile.ZIP_DEFLATED),
        "member 'test__proba.npy' declares .* a zip bomb",
        outcome="used",
    ),
    Case(
        "predictions_bzip2",
        lambda d, r: _rewrite_zip(d / "predictions.npz", {}, zipfile.ZIP_BZIP2),
        "compressed with method 12",
        outcome="used",
    ),
    Case(
        "predictions_header_lies_about_its_size",
        _predictions("test__proba", _npy_header_lies),
        r"declares shape \(15, 3\) .* not the",
        outcome="used",
    ),
    Case(
        "predictions_wrong_columns",
        _predictions("validation__proba", lambda a: _npy(np.ones((len(a), 7)))),
        r"validation__proba.npy has shape \(15, 7\), expected \(15, 3\)",
        outcome="used",
    ),
    Case(
        "predictions_strings",
        _predictions("validation__proba", lambda a: _npy(np.full(a.shape, "x"))),
        "holds <U1 values, expected floats",
        outcome="used",
    ),
    Case(
        "predictions_nan",
        _predictions("validation__proba", lambda a: _npy(np.full_like(a, np.nan))),
        "NaN, inf or values outside",
        outcome="used",
    ),
    Case(
        "predictions_rows_not_summing_to_one",  # zeros: a paired test would find a "difference", log-loss 0.000
        _predictions("test__proba", lambda a: _npy(np.zeros_like(a))),
        "rows that do not sum to 1",
        outcome="used",
    ),
    Case(
        "predictions_row_count",
        _predictions("test__proba", lambda a: _npy(a[:5])),
        r"has shape \(5, 3\), expected \(15, 3\)",
        outcome="used",
    ),
    Case(
        "predictions_labels_out_of_range",
        _predictions("test__labels", lambda a: _npy(np.full_like(a, 99))),
        "labels outside 0..2",
        outcome="used",
    ),
    Case(
        "predictions_labels_float",
        _predictions("test__labels", lambda a: _npy(a.astype(float))),
        "expected integers",
        outcome="used",
    ),
    Case(
        "png_is_a_folder",
        lambda d, r: (d / "confusion_test.png").mkdir(),
        "a folder of that name is in the way",
        outcome="show",
    ),
]


@pytest.mark.parametrize("case", RUN_FOLDER_CASES, ids=[c.id for c in RUN_FOLDER_CASES])
def test_crafted_run_folder(case: Case, runs: Runs, store):
    victim = runs.ids[case.victim]
    case.damage(runs.folder(case.victim), _record(runs.folder(case.victim)))
    listed = [r["id"] for r in list_runs(store, runs.root)]  # never crashes
    table = cli("runs", "--store", store, "--runs", runs.root)
    assert table.exit_code == 0, table.output
    assert runs.ids["knn"] in table.output and runs.ids["sgd"] in table.output
    if case.outcome in ("broken", "used"):
        if case.outcome == "broken":
            assert victim not in listed
            assert "broken run folder" in table.output
            assert re.search(case.expect, table.output.replace("\n", " ")), table.output
        else:  # the listing reads run.json only: the run is listed, and refused by every command that uses it
            assert victim in listed and "broken" not in table.output, table.output
        with pytest.raises(StoreError, match=case.expect):
            get_run(victim, store, runs.root)
        if case.victim != "ensemble":
            with pytest.raises(StoreError, match=case.expect):
                evaluate_run(victim, "test", store, runs.root)
            with pytest.raises(StoreError, match=case.expect):
                ensemble([victim, runs.ids["knn"]], store=store, runs=runs.root)
        r = cli("runs", "show", victim, "--store", store, "--runs", runs.root)
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert re.search(case.expect, r.output.replace("\n", " ")), r.output
    elif case.outcome == "apply":
        assert victim in listed
        with pytest.raises(StoreError, match=case.expect):
            evaluate_run(victim, "test", store, runs.root)
        images = Path(FeatureStore(store).split_info("test")["source_root"]) / "test" / "cat"
        with pytest.raises(StoreError, match=case.expect):
            predict(victim, [images], store=store, runs=runs.root)
        r = cli("runs", "evaluate", victim, "--store", store, "--runs", runs.root)
        assert (
            r.exit_code == 1 and "Traceback" not in r.output and re.search(case.expect, r.output.replace("\n", " "))
        ), r.output
    else:
        assert victim in listed
        with pytest.raises((StoreError, OutputError), match=case.expect):  # a folder at a PNG name: an output error
            show_run(victim, store, runs.root)
    # the other runs still show, evaluate and ensemble
    assert show_run(runs.ids["knn"], store, runs.root)[1]
    assert evaluate_run(runs.ids["sgd"], "test", store, runs.root)["n"] == 15
    assert ensemble([runs.ids["knn"], runs.ids["sgd"]], store=store, runs=runs.root)["kind"] == "ensemble"
    assert list((runs.root.parent / "outside").iterdir()) == []  # nothing written outside the runs folder


def test_other_runs_still_predict_beside_broken_ones(runs: Runs, store):
    _garbage(runs.folder("logreg"), _record(runs.folder("logreg")))
    _truncate_predictions(runs.folder("sgd"), _record(runs.folder("sgd")))
    images = Path(FeatureStore(store).split_info("test")["source_root"]) / "test" / "cat"
    rows = predict(runs.ids["knn"], [images], store=store, runs=runs.root)
    assert len(rows) == 5 and all(r["label"] in ("cat", "dog", "fox") for r in rows)
    with pytest.raises(StoreError, match="changed after the fit"):
        predict(runs.ids["ensemble"], [images], store=store, runs=runs.root)  # a broken member breaks the ensemble


def _orphan(runs: Runs, name: str, marked: bool = True, role: str = "new", age_s: float = 3600) -> Path:
    """A copy of the knn run named ``name`` (with featstore's temporary-folder marker if ``marked``), last changed ``age_s`` ago."""
    from featstore.runs.write import TMP_MARKER

    d = runs.root / name
    shutil.copytree(runs.folder("knn"), d)
    if marked:
        (d / TMP_MARKER).write_text(json.dumps({"run": runs.ids["knn"], "role": role}))
    then = time.time() - age_s
    for p in [d, *d.iterdir()]:
        os.utime(p, (then, then))
    return d


def test_only_featstore_temporary_folders_are_cleaned_and_only_when_writing(runs: Runs, store):
    old, fresh = _orphan(runs, ".logreg-dead00.x1.tmp"), _orphan(runs, ".knn-live00.x2.tmp", age_s=0)
    mine = _orphan(runs, ".my-notes.tmp", marked=False)  # a user's folder that happens to look like one of ours
    r = cli("runs", "--store", store, "--runs", runs.root)
    assert r.exit_code == 0 and "dead00" not in r.output and "live00" not in r.output and "broken" not in r.output
    get_run(runs.ids["knn"], store, runs.root)
    assert old.exists() and fresh.exists() and mine.exists()  # listing and reading remove nothing
    fit(store, "logreg", runs=runs.root)
    assert not old.exists()  # left by a fit killed an hour ago
    assert fresh.exists()  # may still be being written by a running fit
    assert mine.exists() and (mine / "run.json").exists()  # no marker: never featstore's to remove


def test_an_old_version_left_between_two_renames_is_restored(runs: Runs, store):
    knn = runs.ids["knn"]
    aside = _orphan(runs, f".{knn}.x3.old.tmp", role="old")
    shutil.rmtree(runs.folder("knn"))  # killed between add_split's renames: the old version is the only copy
    fit(store, "logreg", runs=runs.root)
    assert not aside.exists() and get_run(knn, store, runs.root)[0]["id"] == knn
    assert evaluate_run(knn, "test", store, runs.root)["n"] == 15


def test_every_temporary_run_folder_holds_the_marker(runs: Runs, store, monkeypatch):
    from featstore.runs import write as runwrite

    seen, real = [], runwrite._write_contents
    monkeypatch.setattr(
        runwrite,
        "_write_contents",
        lambda tmp, *a: (  # tmp: /proc/self/fd/<n> of the folder (written through its descriptor), its name by realpath
            seen.append((os.path.basename(os.path.realpath(tmp)), (tmp / runwrite.TMP_MARKER).is_file())),
            real(tmp, *a),
        )[1],
    )
    from featstore import record_split

    rec = fit(store, "logreg", test=None, runs=runs.root)
    record_split(rec["id"], "test", store, runs.root)  # add_split: a new version written aside, swapped in
    assert len(seen) == 2 and all(marked and name.endswith(".tmp") for name, marked in seen), seen
    assert (
        not (runs.root / rec["id"] / runwrite.TMP_MARKER).exists()
        and "test" in get_run(rec["id"], store, runs.root)[0]["metrics"]
    )
    assert not [d for d in runs.root.iterdir() if d.name.endswith(".tmp")]


def test_knn_neighbour_index_is_rebuilt_not_trusted(runs: Runs, store, tmp_path):
    """A k-NN model whose stored k-d tree indexes other rows: predictions come from a fresh index of its own rows."""
    import skops.io as sio
    from sklearn.neighbors import KDTree

    from featstore.experiments.classifiers import build_classifier
    from featstore.runs.artifacts import load_estimator

    X, y = FeatureStore(store).load("train")
    est = build_classifier("knn", {"n_neighbors": 3})
    est.set_params(clf__algorithm="kd_tree").fit(X, y)
    honest = est.predict(FeatureStore(store).load("test")[0])
    est[-1]._tree = KDTree(np.zeros((2, est[-1]._fit_X.shape[1])))  # indexes 2 rows of zeros, not the 30 fitted rows
    folder = runs.folder("knn")
    sio.dump(est, folder / "model.skops")
    _reseal(folder)
    loaded = load_estimator(folder, _record(folder)["artifact"])
    assert loaded[-1]._tree is not None and loaded[-1]._tree.data.shape[0] == len(X)
    np.testing.assert_array_equal(loaded.predict(FeatureStore(store).load("test")[0]), honest)


def test_a_zip_member_that_unpacks_to_more_than_it_declares_is_refused(runs: Runs, store):
    """ZipFile.read would decompress the whole stream (8 MiB here, GBs for a real bomb) before cutting it at the declared 100 bytes."""
    import struct
    import tracemalloc

    from featstore.safezip import check_zip

    path = runs.folder("logreg") / "predictions.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("test__proba.npy", b"\0" * (8 << 20))
    data = bytearray(path.read_bytes())
    for sig, at in (
        (b"PK\x03\x04", 22),
        (b"PK\x01\x02", 24),
    ):  # uncompressed size in the local header and the central directory
        i = data.index(sig)
        data[i + at : i + at + 4] = struct.pack("<I", 100)
    path.write_bytes(bytes(data))
    _reseal(path.parent)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="unpacks to more than the 100 bytes it declares"):
            check_zip(path)
        assert tracemalloc.get_traced_memory()[1] < 4 << 20  # measured in 1 MiB steps, never held whole
    finally:
        tracemalloc.stop()
    with pytest.raises(StoreError, match="unpacks to more than the 100 bytes"):  # refused when the run is used
        get_run(runs.ids["logreg"], store, runs.root)


def test_runs_show_replaces_pngs_instead_of_writing_through_hard_links(runs: Runs, store):
    victim = runs.root.parent / "outside" / "victim.txt"
    victim.write_text("precious")
    os.link(victim, runs.folder("knn") / "confusion_test.png")
    _, pngs = show_run(runs.ids["knn"], store, runs.root)
    assert victim.read_text() == "precious"
    png = runs.folder("knn") / "confusion_test.png"
    assert png in pngs and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_nlink == 1
    assert not [p for p in runs.folder("knn").iterdir() if p.name.startswith(".")]  # no temporary file left
    victim.unlink()  # the outside folder must be empty at the end of every test


def test_ensemble_names_one_extractor_per_fingerprint(runs: Runs, store):
    rec = get_run(runs.ids["ensemble"], store, runs.root)[0]
    fp = get_run(runs.ids["knn"], store, runs.root)[0]["fingerprint"]
    assert (rec["extractor"], rec["fingerprint"]) == (
        "vgg16",
        fp,
    )  # two members, one extractor: one name, one fingerprint
    table = cli("runs", "--store", store, "--runs", runs.root).output
    assert next(line for line in table.splitlines() if line.startswith(rec["id"])).split()[-3:-1] == ["vgg16", fp[:12]]


# ------------------------------------------------------------------ hostile skops artifacts
def _chain(final: Callable, last_kw: dict, text: str):
    """FunctionTransformers chaining numpy functions: features -> array full of `text` -> `text` -> final(text, **last_kw)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    return Pipeline(
        [
            ("a", FunctionTransformer(np.full_like, kw_args={"fill_value": text, "dtype": "O"})),
            ("b", FunctionTransformer(np.take, kw_args={"indices": 0})),
            ("c", FunctionTransformer(final, kw_args=last_kw)),
            ("clf", LogisticRegression().fit(np.eye(3), [0, 1, 2])),
        ]
    )


def _run_python(marker: Path):
    from sklearn.utils import _testing

    return _chain(_testing.assert_run_python_script_without_output, {}, f"open({str(marker)!r}, 'w').write('ran')")


def _numpy_save(marker: Path):
    return _chain(np.save, {"arr": [1]}, str(marker))


def _numpy_ufunc(marker: Path):
    """Only a ufunc, which skops trusts by default: harmless, but not a type featstore writes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    return Pipeline([("a", FunctionTransformer(np.negative)), ("clf", LogisticRegression().fit(np.eye(3), [0, 1, 2]))])


class Hostile(NamedTuple):
    """One crafted model: built from the marker file it would write if any of it ran."""

    id: str
    build: Callable[[Path], object]
    expect: str


HOSTILE_ARTIFACT_CASES = [
    Hostile(
        "numpy_chain_into_sklearn_testing_helper",
        _run_python,
        r"contains types featstore never writes \(numpy.full_like, numpy.take, .*sklearn.utils._testing.assert_run_python_script",
    ),
    Hostile("numpy_save", _numpy_save, r"contains types featstore never writes \(.*numpy.save"),
    Hostile("numpy_ufunc_trusted_by_skops", _numpy_ufunc, r"contains types featstore never writes \(numpy.negative, "),
]


@pytest.mark.parametrize("path", ["evaluate", "predict", "cli"])
@pytest.mark.parametrize("case", HOSTILE_ARTIFACT_CASES, ids=[c.id for c in HOSTILE_ARTIFACT_CASES])
def test_hostile_artifact_is_refused_and_nothing_runs(case: Hostile, path: str, runs: Runs, store, tmp_path):
    import skops.io as sio

    marker = tmp_path / "outside" / "marker.npy"
    folder = runs.folder("logreg")
    sio.dump(case.build(marker), folder / "model.skops")
    record = _record(folder)
    _recorded_as(folder, record, folder / "model.skops")
    images = Path(FeatureStore(store).split_info("test")["source_root"]) / "test" / "cat"
    if path == "evaluate":
        with pytest.raises(StoreError, match=case.expect):
            evaluate_run(runs.ids["logreg"], "test", store, runs.root)
    elif path == "predict":
        with pytest.raises(StoreError, match=case.expect):
            predict(runs.ids["logreg"], [images], store=store, runs=runs.root)
    else:
        for args in (
            ["runs", "evaluate", runs.ids["logreg"]],
            ["predict", "--run", runs.ids["logreg"], images],
            ["runs", "show", runs.ids["logreg"]],
        ):
            r = cli(*args, "--store", store, "--runs", runs.root)
            assert "featstore never writes" in r.output and "Traceback" not in r.output, r.output
    assert not marker.exists() and list((tmp_path / "outside").iterdir()) == []  # nothing executed, nothing written


def test_allow_list_covers_every_registered_classifier(tmp_path):
    """Regenerate the types of every classifier's skops file; a classifier needing a new type fails here, loudly."""
    import skops.io as sio

    from featstore.experiments.classifiers import build_classifier, get_classifier, list_classifiers
    from featstore.runs.artifacts import ARTIFACT_TYPES, skops_types

    rng = np.random.default_rng(0)
    small = {"knn": {"n_neighbors": 3}, "random_forest": {"n_estimators": 3}, "svm": {"calibration_folds": 2}}
    needed: dict[str, set[str]] = {}
    for name in list_classifiers():
        if name == "dense":  # saved as .keras, loaded with safe_mode=True
            continue
        spec = get_classifier(name)
        variants = (
            [{}]
            + [{k: c} for k, p in spec.params.items() for c in p.choices]
            + [{k: v} for k, vs in spec.grid.items() for v in vs]
        )
        if "pca" in spec.params:  # the optional vector steps: power and L2 normalisation, no scaler, PCA
            variants += [{"power": 0.5, "l2": True, "scale": False, "pca": 2}, {"pca": 2}]
        for params in variants:
            for X, y in (
                (rng.normal(size=(30, 2, 2, 3)).astype(np.float32), np.arange(30) % 3),
                (rng.normal(size=(30, 20)).astype(np.float16), np.arange(30) % 2),
            ):
                est = build_classifier(
                    name, {**params, **{k: v for k, v in small.get(name, {}).items() if k not in params}}
                ).fit(X, y)
                path = tmp_path / "m.skops"
                sio.dump(est, path)
                for t in skops_types(path) | set(sio.get_untrusted_types(file=path)):
                    needed.setdefault(t, set()).add(name)
    missing = {t: sorted(by) for t, by in needed.items() if t not in ARTIFACT_TYPES}
    assert not missing, (
        f"add these to featstore.runs.artifacts.ARTIFACT_TYPES once you checked they hold no code: {missing}"
    )


# ------------------------------------------------------------------ crafted stores: add a row to CRAFTED_STORE_CASES
STORE_CFG = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=4, pooling="avg", layer="block1_pool")


def _set_commit(value):
    def damage(f):
        f["vgg16/train"].attrs["commit"] = value

    return damage


def _replace(key, make):
    def damage(f):
        sg = f["vgg16/train"]
        old = sg[key][()]
        del sg[key]
        sg.create_dataset(key, data=make(old))

    return damage


def _del(where, attr=None):
    def damage(f):
        if attr:
            del f[where].attrs[attr]
        else:
            del f[where]

    return damage


def _huge_features(f):
    sg = f["vgg16/train"]
    del sg["features"]
    sg.create_dataset("features", shape=(10**12, 64), maxshape=(None, 64), chunks=(1024, 64), dtype="float32")
    sg.attrs["commit"] = np.array([10**12, 0, 10**12], dtype=np.int64)


def _labels_out_of_range(f):
    f["vgg16/train/labels"][0] = 99


def _edit_provenance(f):
    f["vgg16"].attrs["layer"] = "block2_pool"  # fingerprint no longer matches


def _root_attr(value):
    def damage(f):
        f.attrs["format_version"] = value

    return damage


def _split_attr(key, value):
    def damage(f):
        f["vgg16/train"].attrs[key] = value

    return damage


def _extractor_attr(key, value, refingerprint=True):
    """Set an extractor attribute; recompute the fingerprint so only the value's type is wrong."""

    def damage(f):
        from featstore import provenance

        g = f["vgg16"]
        g.attrs[key] = value
        if refingerprint:
            g.attrs["fingerprint"] = provenance.fingerprint(provenance.attrs_of(g))

    return damage


def _object_reference(where, key):
    def damage(f):
        f[where].attrs[key] = f["vgg16/train/labels"].ref

    return damage


def _damage_listing(f):
    lg = f["vgg16/train/listing"]
    del lg["paths"]
    lg.create_dataset("paths", data=np.arange(12))
    f["vgg16/train"].attrs["listing_sha256"] = "0" * 64  # so a resume compares the listings


# (id, damage, fragment every refusal must contain)
CRAFTED_STORE_CASES = [
    ("commit-wrong-length", _set_commit(np.array([3, 0], dtype=np.int64)), "expected three integers"),
    ("commit-wrong-type", _set_commit(np.array([1.5, 0.0, 1.5])), "expected three integers"),
    ("commit-string", _set_commit("12"), "expected three integers"),
    ("commit-larger-than-data", _set_commit(np.array([20, 0, 20], dtype=np.int64)), "rows were lost"),
    ("commit-negative", _set_commit(np.array([-1, 0, -1], dtype=np.int64)), "inconsistent"),
    ("commit-over-n-images", lambda f: f["vgg16/train"].attrs.__setitem__("n_images", 4), "images done of n_images 4"),
    ("labels-out-of-range", _labels_out_of_range, "outside 0..1"),
    ("labels-float", _replace("labels", lambda y: y.astype(np.float32)), "expected 1-D integers"),
    ("features-int", _replace("features", lambda x: x.astype(np.int32)), "not floating point"),
    ("features-declared-1e12-rows", _huge_features, "labels holds"),
    ("missing-class-names", _del("vgg16/train", "class_names"), "attributes missing: class_names"),
    ("missing-labels", _del("vgg16/train/labels"), "dataset labels is missing"),
    ("missing-provenance", _del("vgg16", "weights_digest"), "provenance attributes missing: weights_digest"),
    ("edited-provenance", _edit_provenance, "fingerprint attribute does not match"),
    ("format-version-text", _root_attr("two"), "not an integer"),
    ("format-version-float", _root_attr(1.5), "not an integer"),
    ("format-version-old", _root_attr(1), "older featstore"),
    ("format-version-newer", _root_attr(99), "Upgrade featstore"),
    ("format-version-inf", _root_attr(float("inf")), "not an integer"),
    ("n-images-inf", _split_attr("n_images", float("inf")), "expected a count"),
    (
        "commit-object-reference",
        _object_reference("vgg16/train", "commit"),
        "of HDF5 type reference, which featstore never writes",
    ),
    ("complete-array", _split_attr("complete", np.array([True, False])), "expected true or false"),
    ("complete-string", _split_attr("complete", "False"), "expected true or false"),
    ("feature-shape-text", _extractor_attr("feature_shape", "abc"), "expected a list of positive integers"),
    ("feature-shape-number", _extractor_attr("feature_shape", 5), "expected a list of positive integers"),
    (
        "model-object-reference",
        _object_reference("vgg16", "model"),
        "of HDF5 type reference, which featstore never writes",
    ),
    (
        "listing-paths-integers",
        _damage_listing,
        "listing/paths has dtype int64 and 1 dimensions, expected 1-D HDF5 strings",
    ),
    # a row dataset name (`copy`, of augmented copies) as an external link in a plain split: named, never followed
    (
        "copy-external-link",
        lambda f: f["vgg16/train"].__setitem__("copy", h5py.ExternalLink("/etc/passwd", "/x")),
        "/vgg16/train/copy (ExternalLink)",
    ),
]


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    """(data root, a sound store with train/validation/test of 2 classes)."""
    root = tmp_path_factory.mktemp("crafted")
    data = root / "data"
    for split, seed, n in (("train", 1, 6), ("validation", 2, 3), ("test", 3, 3)):
        write_images(data, split, {"cat": n, "dog": n}, seed=seed)
    path = root / "good.h5"
    for split in ("train", "validation", "test"):
        extract(data, split, path, STORE_CFG)
    return data, path


def _crafted(good, tmp_path, damage):
    data, path = good
    bad = tmp_path / "bad.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        damage(f)
    return data, bad


def _refused(fn, fragment):
    """fn() fails with a FeatstoreError naming the problem (never another exception)."""
    with pytest.raises(FeatstoreError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        fn()


@pytest.mark.parametrize("case_id,damage,fragment", CRAFTED_STORE_CASES, ids=[c[0] for c in CRAFTED_STORE_CASES])
def test_crafted_store_gets_one_clear_message_everywhere(good_store, tmp_path, case_id, damage, fragment):
    data, bad = _crafted(good_store, tmp_path, damage)
    before = bad.read_bytes()
    # fit and resume refuse with the reason
    _refused(lambda: fit(bad, "logreg", runs=tmp_path / "runs"), fragment)
    _refused(lambda: extract(data, "train", bad, STORE_CFG), fragment)
    assert bad.read_bytes() == before, "a refused resume must not touch the store"
    # info shows the store with the damaged part marked, or refuses it as a whole
    try:
        text = store_tree(str(bad))
        assert "BROKEN" in text and fragment.split("(")[0] in text
    except FeatstoreError as exc:
        assert fragment.split("(")[0] in str(exc)
    # check lists it as a problem
    try:
        problems = check_store(bad)
        assert problems and any(fragment.split("(")[0] in p for p in problems), problems
    except FeatstoreError as exc:
        assert fragment.split("(")[0] in str(exc)


def test_non_utf8_stored_path_round_trips(good_store, tmp_path):
    data, bad = _crafted(good_store, tmp_path, lambda f: f["vgg16/train/paths"].__setitem__(0, b"train/cat/\xff.png"))
    assert FeatureStore(bad).paths("train")[0] == "train/cat/\udcff.png"
    assert check_store(bad) == []


def test_sound_store_passes(good_store):
    assert check_store(good_store[1]) == []


# ------------------------------------------------------------------ hostile image folders (rows in tests/adversarial_images.py)
@pytest.mark.parametrize("case_id,build,expect", HOSTILE_FOLDER_CASES, ids=[c[0] for c in HOSTILE_FOLDER_CASES])
def test_hostile_folder_extracts_to_the_right_rows(tmp_path, case_id, build, expect):
    build(tmp_path)
    path = tmp_path / "f.h5"
    r = extract(
        tmp_path / "data",
        "train",
        path,
        ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=1, layer="block1_pool", pooling="avg"),
        decode_threads=2,
    )
    fs = FeatureStore(path)
    counts = dict(zip(fs.class_names(), np.bincount(fs.labels("train"), minlength=len(fs.class_names())).tolist()))
    assert (r.rows, r.failed, counts) == (expect["rows"], expect["failed"], expect["labels"])
    assert check_store(path) == []

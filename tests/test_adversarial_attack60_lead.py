"""Attack 60 #5-#8: a parameter given no value fitted on the defaults, then an IndexError; a np.longdouble parameter
value fitted, then recursed to a RecursionError while recorded (the fit lost), other numpy values were recorded as
text; FeatureStore.copy_problems(block=0) looped for ever; sweep refused reduce=avg on a vector extractor after
recording earlier cells, naming fit's spelling of the fix, which sweep refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featstore
from featstore.errors import ConfigError
from featstore.store.writer import write_arrays

from .test_adversarial_attack54_fixCI import _synthetic


@pytest.mark.parametrize("params", [{"C": []}, {"bogus": []}])
def test_a_parameter_given_no_value_is_refused_before_any_fit(tmp_path, params):
    store = _synthetic(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match=r"is given no value|unknown parameter 'bogus'"):
        featstore.fit(store, "logreg", params)
    with pytest.raises(ConfigError, match=r"is given no value|unknown parameter 'bogus'"):
        featstore.sweep(store, ["knn", "logreg"], params={"logreg": params})
    assert not (tmp_path / "s.runs").exists()


def test_numpy_parameter_values_are_recorded_as_python_numbers(tmp_path):
    store = _synthetic(tmp_path / "s.h5")
    rec = featstore.fit(store, "logreg", {"C": [np.longdouble("0.5")], "max_iter": [np.uint64(500)]})
    assert rec.params["C"] == 0.5 and rec.params["max_iter"] == 500
    saved = json.loads((tmp_path / "s.runs" / rec.id / "run.json").read_text())
    assert saved["params"]["max_iter"] == 500 and saved["inputs"]["given"] == {"C": [0.5], "max_iter": [500]}


def test_copy_problems_refuses_a_block_of_no_rows(tmp_path):
    store = _synthetic(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match=r"block=0 must be a whole number of rows of at least 1"):
        featstore.FeatureStore(store).copy_problems("train", block=0)


def test_sweep_checks_every_cells_reduce_before_any_fit(tmp_path):
    store = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    for name, shape in (("a_map", (2, 2, 3)), ("b_vec", (6,))):
        for split in ("train", "validation", "test"):
            y = np.arange(30) % 3
            write_arrays(store, name, split, rng.normal(size=(30, *shape)).astype(np.float32), y, ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"'b_vec''s features are stored as vectors.*--param logreg:reduce=flatten"):
        featstore.sweep(store, ["logreg"], params={"logreg": {"reduce": ["avg"]}})
    assert not (tmp_path / "s.runs").exists()


def test_a_grid_of_millions_of_settings_is_refused_before_it_is_built(tmp_path):
    """Given values multiply: 6 parameters of 20 values made 64 million settings in itertools.product (memory, then
    fits for ever); over MAX_SETTINGS (10,000) is one line before any work."""
    store = _synthetic(tmp_path / "s.h5")
    big = {"C": [0.1 * (i + 1) for i in range(101)], "max_iter": list(range(100, 201))}
    with pytest.raises(ConfigError, match=r"10,201 settings to try \(101 x 101\), over 10,000; give fewer values"):
        featstore.fit(store, "logreg", big)
    with pytest.raises(ConfigError, match=r"10,201 settings to try"):
        featstore.sweep(store, ["logreg"], params={"logreg": big})
    assert not (tmp_path / "s.runs").exists()

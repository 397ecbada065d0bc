"""Attack 70 #3: a registered classifier with a list-valued parameter (an MLP's layer sizes) ended in "TypeError:
unhashable type: 'list'" on any value since repeated --param values are refused (attack 68 #10); list and dict values
are compared by their JSON, so a repeated one is still refused in one line."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression

from featstore.errors import ConfigError
from featstore.experiments import classifiers
from featstore.experiments.classifiers import get_classifier, register_classifier
from featstore.experiments.params import Param


@pytest.fixture
def mlp(monkeypatch):
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))  # registered for this test only
    register_classifier("a70_mlp", "a list-valued parameter", {"layers": Param(list, [8])})(
        lambda p: LogisticRegression(max_iter=50 + len(p["layers"]))
    )
    return get_classifier("a70_mlp")


def test_a_list_valued_parameter_is_checked_not_a_traceback(mlp):
    mlp.check_values({"layers": [[8], [16]]})  # two settings: accepted
    with pytest.raises(ConfigError, match=r"parameter layers for a70_mlp lists \[8\] twice; give each value once"):
        mlp.check_values({"layers": [[8], [8]]})

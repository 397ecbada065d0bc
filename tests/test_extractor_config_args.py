"""ExtractorConfig's arguments are checked as the API functions' are (featstore.apiargs): ``layer=5`` and
``image_size=32.5`` were tracebacks from deep inside extract ("'int' object is not iterable", Keras's "Cannot convert
... to a shape"), ``mixed_precision="yes"`` was taken as True (and fingerprinted so), ``layers="conv1"`` cut at five
layers named c, o, n, v, 1. Each is one line naming the argument; one name where a list belongs is one layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featstore import ConfigError, ExtractorConfig


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"layer": 5}, "layer=5 is an int; give a str or None"),
        ({"layers": ["block1_conv1", 3]}, "layers[1]=3 is an int; give a str"),
        ({"image_size": 32.5}, "image_size=32.5 is a float; give a whole number (an int) or None"),
        ({"image_size": "abc"}, "image_size='abc' is a str"),
        ({"mixed_precision": "yes"}, "mixed_precision='yes' is a str; give True or False"),
        ({"preprocess": 3}, "preprocess=3 is an int; give a str or None"),
        ({"model": 3}, "model=3 is an int; give a path (a str or a pathlib.Path)"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_argument(given, said):
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(weights="none", **given)
    assert str(err.value) == f"ExtractorConfig(): {said}" or str(err.value).startswith(f"ExtractorConfig(): {said}")


def test_right_types_are_taken_as_before():
    assert ExtractorConfig(layers="block1_conv1").cut_layers == ("block1_conv1",)  # one layer, not its characters
    assert ExtractorConfig(layers=["a", "b"]).cut_layers == ("a", "b")
    assert ExtractorConfig(image_size=np.int64(32), seed=np.int32(3)).image_size == 32
    assert ExtractorConfig(model=Path("m.keras"), weights=Path("w.weights.h5")).weights == Path("w.weights.h5")
    cfg = ExtractorConfig(layer="block4_pool", mixed_precision=np.bool_(False))
    assert cfg.layer == "block4_pool" and not cfg.mixed_precision

"""Attack 43's cases fixed by the lead (reproducers on branch attack43)."""

from __future__ import annotations

import pytest

from featstore.errors import ConfigError


def test_pooling_at_a_flatten_default_cut_names_pooling_not_a_missing_cut(tmp_path):
    """Attack 43 #3: ``--pooling avg`` where the default cut is a Flatten was said as "the model has no default cut"
    (every ConfigError at the default cut was wrapped), while the listing called 'flat' the default cut."""
    import keras

    from featstore import ExtractorConfig, extract
    from tests.conftest import write_data_root

    i = keras.Input((16, 16, 3))
    x = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="conv")(i))
    keras.Model(i, keras.layers.Dense(2, name="head")(x)).save(tmp_path / "small.keras")
    with pytest.raises(ConfigError) as err:
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "small.keras"), pooling="avg"),
        )
    assert "no default cut" not in str(err.value)
    assert "--pooling avg needs a 4-D conv output, and layer flat of" in str(err.value)
    assert "gives (392,) per image: leave --pooling out, or cut at a conv layer" in str(err.value)

"""The augmentation option: parsing, seeding, and inference left alone."""

import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.images.augment import AUGMENTATIONS, augment_batch, parse_augment


def test_spec_is_canonical_whatever_the_spelling():
    assert (
        parse_augment("zoom=0.2, flip").spec
        == parse_augment("flip=horizontal,zoom=0.2").spec
        == "flip=horizontal,zoom=0.2"
    )
    assert not parse_augment("") and not parse_augment(None)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("blur", "choose one of: flip"),
        ("rotate=2", "at most 0.5"),
        ("zoom=-1", "above 0"),
        ("flip=diag", "horizontal_and_vertical"),
        ("contrast=x", "a number"),
        ("flip,flip", "twice"),
        ("flip,", "empty item; remove the extra comma"),  # from Python too: the command line refuses it
        ("flip, ,zoom=0.2", "empty item"),
    ],
)
def test_bad_names_and_values_say_what_is_valid(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_augment(bad)


def _images():
    return np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3)).astype(np.uint8)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_same_seed_same_draws_other_seed_other_draws_and_off_at_inference(name):
    aug, x = parse_augment(name), _images()
    a, b, c = (augment_batch(aug.model(s, 24), x) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) or name == "flip"  # a flip of 4 images can draw the same coins under two seeds
    assert not np.array_equal(a, x.astype(np.float32)) or name == "flip"
    np.testing.assert_array_equal(
        np.asarray(aug.model(3, 24)(x.astype(np.float32), training=False)), x.astype(np.float32)
    )
    assert a.min() >= 0 and a.max() <= 255

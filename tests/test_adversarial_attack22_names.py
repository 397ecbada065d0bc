"""Attack 22 (issue #19), finding 11: an empty name is refused in the caller's words. ``ExtractorConfig(layer="")``
said "cut_layers=('',) ..." (a property nobody passes) and ``weights=""`` was taken for the current folder ("weights
file ... is a folder"); "give a extractor name"; the command line's comma lists named the API's ``extractors=[...]``
(`sweep --extractor 'vgg16,'`), the API's ``cut_layers`` (`extract --layer 'block3_pool,'`), or dropped the empty
item silently and ran (`probe --extractor ',vgg16'`, `sweep --clf 'logreg,'`: rc 0). Each test failed with its part of
the fix undone. No model is built: every refusal comes before any work."""

from __future__ import annotations

import re

import pytest
import typer

from featstore.cli import app
from featstore.errors import ConfigError
from tests.test_adversarial_attack2 import cli, no_traceback
from tests.test_adversarial_attack3 import synthetic_store


# ------------------------------------------------------------------ the Python API: the argument as the caller gave it
@pytest.mark.parametrize(
    "kwargs, said",
    [
        ({"layer": ""}, "layer='' is an empty layer name (an unset variable?); give a layer name, or leave layer out"),
        ({"layer": "  "}, "layer='  ' is an empty layer name"),
        ({"layers": ("block3_pool", "")}, "layers=('block3_pool', '') holds an empty layer name"),
        ({"layers": [" "]}, "layers=[' '] holds an empty layer name"),
        ({"weights": ""}, "weights='' is an empty weights name (an unset variable?); give imagenet, none, hed-bsds500"),
        ({"weights": " "}, "weights=' ' is an empty weights name"),
    ],
)
def test_extractor_config_names_the_empty_argument_it_was_given(tmp_path, monkeypatch, kwargs, said):
    """layer="" said "cut_layers=('',) holds an empty layer name ...; leave cut_layers out" (ExtractorConfig takes
    layer/layers; cut_layers is what they become), and weights="" reached the weights loader as the current folder:
    "weights file <cwd> is a folder". Both are refused when the configuration is made, naming the argument."""
    from featstore import ExtractorConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        ExtractorConfig(model="vgg16", image_size=32, **{"weights": "none", **kwargs})
    message = str(caught.value)
    assert message.startswith(said), message
    assert "cut_layers" not in message and "folder" not in message and "--" not in message, message


def test_a_cut_given_as_cut_layers_is_still_named_so_and_a_record_is_not_named_as_an_argument(tmp_path):
    """``cut_layers=`` (keyword-only: what ``dataclasses.replace`` passes) is refused by extract() under that name;
    a store's record goes in as ``cut_layers`` too, so its layer is never reported as the caller's ``layer=``."""
    from featstore import ExtractorConfig, extract

    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", cut_layers=("",))
    with pytest.raises(ConfigError, match=r"^cut_layers=\(''\,\) holds an empty layer name"):
        extract(tmp_path, "train", tmp_path / "s.h5", cfg)
    attrs = {"model": "vgg16", "input_size": 32, "layer": "block3_pool", "pooling": "avg", "dtype": "float32"}
    restored = ExtractorConfig.from_attrs({**attrs, "weights": "none"})
    assert restored.cut_layers == ("block3_pool",) and restored == ExtractorConfig(
        model="vgg16", image_size=32, layer="block3_pool", pooling="avg", weights="none"
    )
    # a record's empty layer is never blamed on the caller: not "layer='' ... leave layer out"
    crafted = ExtractorConfig.from_attrs({**attrs, "layer": "", "weights": "none"})
    assert crafted.cut_layers == ("",)


@pytest.mark.parametrize(
    "what, article", [("extractor", "an"), ("split", "a"), ("layer", "a"), ("run", "a"), ("augmentation", "an")]
)
def test_the_refusal_says_an_before_a_vowel(what, article):
    """fit(extractor="") said "give a extractor name"."""
    from featstore.errors import check_names

    with pytest.raises(ConfigError, match=rf"; give {article} {what} name, or leave x out for its default$"):
        check_names(what, x="")


def test_fit_with_an_empty_extractor_says_an_extractor(tmp_path):
    from featstore import fit

    store = synthetic_store(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match=r"^extractor='' is an empty extractor name .*; give an extractor name"):
        fit(store, "knn", extractor="", runs=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ the command line: one parser for every comma list
# (command, option) -> (the command's other words, one valid item). The walk below finds every option whose help
# says it is comma-separated or shows a comma list, so one added later without this entry fails the walk's test.
COMMA_OPTIONS = {
    ("extract", "--layer"): (["--data", "{tmp}/data", "--split", "train", "--store", "{tmp}/new.h5"], "block3_pool"),
    ("extract", "--augment-spec"): (["--data", "{tmp}/data", "--store", "{tmp}/new.h5", "--augment", "2"], "flip"),
    ("sweep", "--clf"): (["--store", "{store}", "--runs", "{tmp}/runs"], "logreg"),
    ("sweep", "--extractor"): (["--store", "{store}", "--runs", "{tmp}/runs"], "s"),
    ("probe", "--extractor"): (["--store", "{store}", "--runs", "{tmp}/runs", "--no-knn"], "s"),
    ("probe", "--k"): (["--store", "{store}", "--runs", "{tmp}/runs"], "3"),
    ("fewshot", "--shots"): (["--store", "{store}", "--runs", "{tmp}/runs", "--trials", "1"], "2"),
    ("finetune", "--augment"): (
        ["--run", "knn-000000", "--unfreeze-from", "block5_conv1", "--store", "{store}", "--runs", "{tmp}/runs"],
        "flip",
    ),
}


def _comma_options() -> set[tuple[str, str]]:
    """(command, --option) of every option whose help calls it comma-separated or shows an example list (a,b)."""
    found = set()

    def walk(command, words):
        for sub_name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*words, sub_name])
        for param in command.params:
            text = getattr(param, "help", None) or ""
            if param.param_type_name == "option" and re.search(r"\bcomma-|\w,\w", text):
                found.add((" ".join(words), next(o for o in param.opts if o.startswith("--"))))

    walk(typer.main.get_command(app), [])
    return found - {("predict", "--out")}  # a file name; its help shows the CSV's columns (path,label,...)


def test_every_comma_list_option_is_covered_here():
    """The eight options split on commas; a new one must be added to COMMA_OPTIONS (and be parsed by comma_list)."""
    assert _comma_options() == set(COMMA_OPTIONS), _comma_options() ^ set(COMMA_OPTIONS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("names") / "s.h5")


@pytest.mark.parametrize("form", ["{v},", ",{v}", "{v},,{v}", "{v}, ,{v}"])
@pytest.mark.parametrize("command, option", list(COMMA_OPTIONS), ids=[" ".join(k) for k in COMMA_OPTIONS])
def test_an_empty_item_of_a_comma_list_is_refused_naming_the_option(tmp_path, store, command, option, form):
    """`sweep --extractor 'vgg16,'` said "extractors=['vgg16', ''] holds an empty extractor name; ... leave
    extractors out" (the API's argument); `probe --extractor ',vgg16'`, `sweep --clf 'logreg,'`, `probe --k '10,'`,
    `fewshot --shots '1,'` and `extract --augment-spec 'flip,'` dropped the empty item and ran (rc 0); `extract
    --layer 'block3_pool,'` named cut_layers. Every one now says the same line, naming the option, before any work."""
    words, valid = COMMA_OPTIONS[(command, option)]
    value = form.format(v=valid)
    args = [w.format(tmp=tmp_path, store=store) for w in words]
    result = cli(command, *args, option, value)
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert out.strip() == f"error: {option} {value!r} has an empty item; remove the extra comma", out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new.h5").exists()


def test_comma_lists_still_take_spaces_and_several_items(tmp_path, store):
    """The one parser strips each item: `sweep --clf 'logreg, knn'` fits both, as before."""
    runs = tmp_path / "runs"
    result = cli("sweep", "--store", store, "--runs", runs, "--clf", "logreg, knn", "--extractor", " s", "--json")
    assert result.exit_code == 0, no_traceback(result)
    assert len([p for p in runs.iterdir() if p.is_dir() and (p / "run.json").exists()]) == 2


def test_an_empty_comma_list_option_is_refused_as_an_unset_variable(tmp_path, store):
    """`probe --k ''` probed with no k at all; --k and --shots are not among the named options, so the parser says it."""
    result = cli("probe", "--store", store, "--runs", tmp_path / "runs", "--k", "")
    out = no_traceback(result)
    assert result.exit_code == 1 and out.strip().startswith("error: --k is empty (an unset shell variable?)"), out
    assert not (tmp_path / "runs").exists()

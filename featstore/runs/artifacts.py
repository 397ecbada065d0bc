"""Saving and loading fitted classifiers without executing untrusted code.

scikit-learn pipelines are written with ``skops.io`` (no pickle). On load, the file's sha256 must equal
the one recorded in the run, and every type or function the file names must be in ``ARTIFACT_TYPES``:
exactly the types featstore's own classifiers produce, so no function reference (``numpy.save``, a
scikit-learn testing helper, even a numpy ufunc) can reach ``FunctionTransformer`` or any other hook.
The Keras head is a ``.keras`` file loaded with ``safe_mode=True``. Before either is opened, the zip's
declared sizes are checked (``featstore.safezip``: no zip bombs); a skops file's trees and SVCs are checked
before skops builds them and the loaded pipeline again after (``featstore.runs.modelcheck``: no array that makes
compiled code read outside memory or loop), with a k-NN index rebuilt from its rows.

>>> "sklearn.pipeline.Pipeline" in ARTIFACT_TYPES, "numpy.save" in ARTIFACT_TYPES
(True, False)
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from featstore.errors import ConfigError, StoreError
from featstore.models.keras_sizes import keras_zip_problem
from featstore.models.preset_json import MAX_WEIGHTS_BYTES
from featstore.runs.applying import checked_finetuned, checked_predict, checked_proba, full_proba  # noqa: F401
from featstore.runs.files import (
    MAX_RECORD_BYTES,
    RECORD,
    BrokenRunError,
    check_zip_file,
    open_regular,
    regular_file,
    verify_file,
)
from featstore.runs.modelcheck import ModelStateError, check_pipeline, check_skops_schema
from featstore.runs.skops_types import ARTIFACT_TYPES, _schema, skops_types  # noqa: F401 - ARTIFACT_TYPES, skops_types re-exported

# Modules that run folders written before the package was laid out by stage name, and where they live now: while
# skops loads a file, the old name is an alias of the new module (only FeatureReshape was ever saved from there).
LEGACY_MODULES = {"featstore.classifiers": "featstore.models.reshape"}


@contextmanager
def _legacy_module_names():
    """Make the old module names importable while a skops file is loaded, then remove them again."""
    import importlib
    import sys

    added = [old for old in LEGACY_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(LEGACY_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def save_estimator(est, folder: Path) -> dict:
    """Write ``est`` into ``folder``; returns the artifact record (file, format, sha256, size; a Keras head's meta too)."""
    from featstore.models.finetuned import FinetunedModel
    from featstore.models.head import DenseHead

    if isinstance(est, FinetunedModel):  # a fine-tuned image -> probabilities model (`featstore finetune`)
        model_file = folder / "model.keras"
        est.model.save(model_file)
        return {"file": model_file.name, "format": "keras-model", **_written(model_file)}
    head = est.steps[-1][1]
    if isinstance(head, DenseHead):
        model_file = folder / "model.keras"
        head.save(model_file)
        reshape = est.steps[0][1]
        meta = {
            "reduce": reshape.reduce,
            "pooled": getattr(reshape, "pooled_", None),  # absent before attack 58 (#3): the rule it was fitted with
            "n_features_in": reshape.n_features_in_,
            "params": head.get_params(),
            "classes": head.classes_.tolist(),
            "history": head.history_,
        }
        (folder / "head.json").write_text(json.dumps(meta, indent=1))
        return {
            "file": model_file.name,
            "format": "keras",
            **_written(model_file),
            "meta_file": "head.json",
            **{f"meta_{k}": v for k, v in _written(folder / "head.json").items()},
        }
    import skops.io as sio

    path = folder / "model.skops"
    sio.dump(est, path)
    _refuse_unloadable(path, est)
    return {"file": path.name, "format": "skops", **_written(path)}


def _refuse_unloadable(path: Path, est) -> None:
    """ConfigError, before the run is recorded, if featstore would refuse to load the model it just wrote (its
    types, its steps): a run featstore cannot load again was recorded, then called "altered after the fit" (attack
    60 #4; a registered classifier is refused before its fit, :func:`reload_problem`, this is the last guard)."""
    import skops.io as sio

    from featstore.runs.modelcheck import RELOADABLE, pipeline_shape

    foreign = sorted((skops_types(path) | set(sio.get_untrusted_types(file=path))) - ARTIFACT_TYPES)
    problem = f"it holds {', '.join(foreign)}, beyond featstore's own types" if foreign else pipeline_shape(est)
    if problem:
        raise ConfigError(
            f"the fitted classifier was not recorded: featstore could not load it again ({problem}); fit one of "
            f"what featstore saves and loads: {RELOADABLE}"
        )


def reload_problem(est) -> str:
    """Why featstore could not load ``est``, an unfitted pipeline a registered builder returned, once fitted and saved
    by :func:`save_estimator` ("" when it could): a Keras head saves only its reshape and head, a skops file loads
    only :func:`featstore.runs.modelcheck.unfitted_problem`'s steps and ``ARTIFACT_TYPES`` (its types as skops sees
    them now, before the fit; a fit adds only arrays and numbers to featstore's classifiers)."""
    from featstore.models.head import DenseHead
    from featstore.models.reshape import FeatureReshape
    from featstore.runs.modelcheck import fit_adds_types, unfitted_problem

    steps = getattr(est, "steps", None)
    if isinstance(steps, list) and steps and isinstance(steps[-1], tuple) and isinstance(steps[-1][-1], DenseHead):
        kinds = [type(s[1]).__name__ if isinstance(s, tuple) and len(s) == 2 else "?" for s in steps]
        if len(steps) == 2 and type(steps[0][1]) is FeatureReshape:
            return ""
        return f"a DenseHead is saved with its FeatureReshape alone, and this pipeline is {kinds}"
    problem = unfitted_problem(est) or fit_adds_types(est)
    if problem:
        return problem
    import skops.io as sio

    try:
        data = sio.dumps(est)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            schema = json.loads(z.read("schema.json"))
        foreign = sorted((skops_types(Path("-"), schema) | set(sio.get_untrusted_types(data=data))) - ARTIFACT_TYPES)
    except Exception as exc:  # skops cannot write it at all
        return f"skops cannot save it ({type(exc).__name__}: {exc})"
    return (
        f"it holds {', '.join(foreign)}: a run loads only the types featstore's own classifiers hold" if foreign else ""
    )


def _written(path: Path) -> dict:
    """A file featstore just wrote, as its artifact record holds it: sha256 and size (the size bounds the hashing of a
    file changed since: attack 35 #3)."""
    from featstore.models.weights import sha256_file

    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def _refuse_foreign(path: Path, types: set[str] | list[str]) -> None:
    """BrokenRunError naming the types outside ARTIFACT_TYPES, if any."""
    foreign = sorted(set(types) - ARTIFACT_TYPES)
    if foreign:
        raise BrokenRunError(
            f"run artifact {path} contains types featstore never writes ({', '.join(foreign)}); refusing to load it. "
            f"Only models saved by featstore's own fit are loaded: fit the classifier again."
        )


def _altered(folder: Path, path: Path, exc: Exception) -> BrokenRunError:
    """The error for a model whose state featstore never writes."""
    return BrokenRunError(
        f"the model {path} holds state featstore never writes ({exc}); it was altered after "
        f"the fit or damaged, and applying it could crash or hang inside scikit-learn's compiled code. "
        f"Refusing to load it: remove the folder {folder} and fit the classifier again."
    )


FORMATS = {  # artifact format -> the keys its record holds (all strings)
    "skops": ("file", "sha256"),
    "keras": ("file", "sha256", "meta_file", "meta_sha256"),
    "keras-model": ("file", "sha256"),
}


# The sizes a record holds since attack 35 #3 (older records have none, and are bounded by the caps below alone).
SIZES = {"skops": ("size",), "keras": ("size", "meta_size"), "keras-model": ("size",)}
# A run's model file: a skops pipeline (a k-NN holds its training rows), a Keras head, or a fine-tuned model (a whole
# backbone's weights). None is larger than the largest preset's weights featstore loads (MAX_WEIGHTS_BYTES, 64 GiB;
# dinov2_giant is 4.5 GB): the same bound, so an old record's file is never hashed for more than about a minute.
MAX_ARTIFACT_BYTES = MAX_WEIGHTS_BYTES
MAX_META_BYTES = MAX_RECORD_BYTES  # head.json: the head's params, classes and history, far smaller than a run.json


def _size_ok(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def check_artifact_record(folder: Path, artifact: object) -> None:
    """BrokenRunError unless ``artifact`` (from run.json) is a record featstore writes: a format, its string keys and,
    when recorded, its files' sizes (non-negative integers)."""
    keys = FORMATS.get(artifact.get("format")) if isinstance(artifact, dict) else None
    if (
        keys is None
        or any(not isinstance(artifact.get(k), str) for k in keys)
        or any(not _size_ok(artifact.get(k)) for k in SIZES[artifact["format"]])
    ):
        wanted = " or ".join(f"{f} with {'/'.join(k)}" for f, k in FORMATS.items())
        raise BrokenRunError(
            f"{folder / RECORD}: the artifact record {artifact!r} is not one featstore writes "
            f"({wanted}, and sizes that are whole numbers)",
            f"remove the folder {folder}",
        )


def artifact_files(folder: Path, artifact: dict) -> None:
    """BrokenRunError unless the files an artifact record names are plain names of regular files (nothing is read)."""
    regular_file(folder, artifact["file"], "run artifact")
    if "meta_file" in FORMATS[artifact["format"]]:
        regular_file(folder, artifact["meta_file"], "run artifact metadata")


def check_artifact(folder: Path, artifact: dict) -> Path:
    """The model file of a run after checking its record, its sha256 (and its meta file's), its zip sizes and, for skops,
    its types and the arrays of its trees and SVCs (see ``modelcheck``)."""
    with held_artifact(folder, artifact):
        pass
    return folder / artifact["file"]


@contextmanager
def held_artifact(folder: Path, artifact: dict, checked: bool = False) -> Iterator[tuple[Path, Path | None]]:
    """``(model file, meta file or None)`` of a run, each a private name of the very file whose size and sha256 were
    checked, held open from the check to the end of the block
    (:func:`~featstore.models.held_input.held_input`): checked, then loaded by name, a model file another user renamed
    onto the name in between was loaded unchecked (attack 35 #4). ``checked``: :func:`check_artifact` passed for this
    folder already: a file of the recorded sha256 is the one its content checks passed, so only the sizes and hashes
    are checked again."""
    from featstore.models.held_input import held_input

    check_artifact_record(folder, artifact)
    with ExitStack() as stack:
        path = regular_file(folder, artifact["file"], "run artifact")
        os.close(open_regular(path, "run artifact", folder))  # a colleague's file closed to you: said as his (36 #10)
        name = stack.enter_context(held_input(path, "run artifact", BrokenRunError))
        size = artifact.get("size")
        verify_file(folder, artifact["file"], artifact["sha256"], "run artifact", size, MAX_ARTIFACT_BYTES, held=name)
        meta = None
        if artifact["format"] == "keras":
            meta_path = regular_file(folder, artifact["meta_file"], "run artifact metadata")
            meta = stack.enter_context(held_input(meta_path, "run artifact metadata", BrokenRunError))
            what, size = "run artifact metadata", artifact.get("meta_size")
            verify_file(folder, artifact["meta_file"], artifact["meta_sha256"], what, size, MAX_META_BYTES, held=meta)
        if not checked:
            _check_content(folder, artifact, name)
        yield name, meta


def _check_content(folder: Path, artifact: dict, path: Path) -> None:
    """The zip sizes of a run's model file (read through ``path``) and, for skops, its types and arrays; Keras
    files' configs bounded by the weights they hold."""
    check_zip_file(path, "run artifact", folder, f"{artifact['format']} file")
    if artifact["format"] in ("keras", "keras-model"):  # loaded with safe_mode=True: no code runs
        problem = keras_zip_problem(path)  # Keras builds each layer from config.json before reading a weight
        if problem:
            raise BrokenRunError(
                f"run artifact {path} is refused before loading: {problem}. It was altered after the fit or damaged; "
                f"remove the folder {folder} and fit (or fine-tune) again"
            )
        return
    schema = _schema(path)
    _refuse_foreign(path, skops_types(path, schema))
    try:
        with zipfile.ZipFile(path) as z:
            check_skops_schema(z, schema)
    except ModelStateError as exc:
        raise _altered(folder, path, exc) from None


def load_estimator(folder: Path, artifact: dict, verified: bool = False):
    """Load a run's fitted pipeline after checking its sha256 and (skops) that it holds only featstore's types, from
    the very file checked (:func:`held_artifact`). ``verified``: :func:`check_artifact` passed for this folder
    already (its size and sha256 are checked again on the file loaded, not its content)."""
    from sklearn.pipeline import Pipeline

    from featstore.models.head import DenseHead
    from featstore.models.reshape import FeatureReshape

    if isinstance(artifact, dict) and artifact.get("format") == "keras-model":
        raise BrokenRunError(
            f"{folder / 'run.json'}: a fitted classifier's artifact must be skops or keras, not a whole "
            f"keras-model (that is what finetune runs hold); remove the folder {folder}"
        )
    with held_artifact(folder, artifact, checked=verified) as (name, meta_name):
        path = folder / artifact["file"]
        if artifact["format"] == "keras":
            try:
                meta = json.loads(meta_name.read_text())  # its size was bounded with its hash
                head = DenseHead(**meta["params"]).load_model(name, meta["classes"], meta.get("history"))
                reshape = FeatureReshape(meta["reduce"])
                reshape.n_features_in_ = meta["n_features_in"]  # stateless apart from the input check
                if isinstance(meta.get("pooled"), bool):  # and whether it pooled (reshape.pooled): fitted since 58 #3
                    reshape.pooled_ = meta["pooled"]
            except StoreError:
                raise
            except Exception as exc:  # Keras: ValueError/TypeError/OSError for files it cannot rebuild; JSON: KeyError
                raise BrokenRunError(
                    f"run artifact {path} cannot be loaded by this Keras ({exc}); fit the classifier again"
                ) from exc
            return Pipeline([("features", reshape), ("clf", head)])
        return _load_skops(folder, path, name)


def _load_skops(folder: Path, path: Path, name: Path):
    """The pipeline in the skops file ``path`` (read through ``name``), with skops' own audit and featstore's checks
    of the loaded objects."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=name)
        _refuse_foreign(path, untrusted)  # skops' own audit, in case it sees a type the schema walk did not
        with _legacy_module_names():
            loaded = sio.load(name, trusted=untrusted)
        return check_pipeline(loaded)  # the loaded objects, checked again (and k-NN rebuilt)
    except ModelStateError as exc:
        raise _altered(folder, path, exc) from None
    except StoreError:
        raise
    except Exception as exc:  # skops raises TypeError/ValueError/KeyError for files of other library versions
        raise BrokenRunError(
            f"run artifact {path} cannot be loaded with these library versions ({exc}); fit the classifier again"
        ) from exc


def load_finetuned(folder: Path, rec, verified: bool = False):
    """A fine-tuned run's model (``FinetunedModel``) after checking its sha256 and zip sizes, from the very file checked
    (:func:`held_artifact`); loaded with ``safe_mode=True``. ``verified``: :func:`check_artifact` passed for this
    folder already.
    """
    from featstore.models.finetuned import FinetunedModel

    artifact = rec["artifact"]
    if artifact.get("format") != "keras-model":
        raise BrokenRunError(
            f"{folder / 'run.json'}: a finetune run's model must be a keras-model artifact; remove the folder {folder}"
        )
    path = folder / str(artifact.get("file"))
    with held_artifact(folder, artifact, checked=verified) as (name, _):
        try:
            model = FinetunedModel.load(name, rec["extractor_attrs"])
        except Exception as exc:  # Keras raises ValueError/TypeError/OSError for files it cannot rebuild
            raise BrokenRunError(
                f"run artifact {path} cannot be loaded by this Keras ({exc}); fine-tune again"
            ) from exc
    # the record says what the model takes and gives: a model.keras of other shapes was swapped in or damaged (refused before any image is read)
    attrs, k = rec["extractor_attrs"], len(rec["class_names"])
    want_in, want_out = (
        (None, model.image_size, model.image_size, int(attrs.get("input_channels", 3))),
        (None, 1 if k == 2 else k),
    )
    got_in, got_out = getattr(model.model, "input_shape", None), getattr(model.model, "output_shape", None)
    if got_in is None or tuple(got_in) != want_in or got_out is None or tuple(got_out) != want_out:
        raise BrokenRunError(
            f"run artifact {path} takes inputs {got_in} and gives outputs {got_out}, but {folder / 'run.json'} records "
            f"{want_in[1:]} images and {k} classes (outputs {want_out}): it was altered or damaged after the "
            f"fine-tuning. Refusing to use it; remove the folder {folder} and fine-tune again."
        )
    return model

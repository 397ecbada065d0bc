"""Plain-text reports for the CLI: the backbone table, the store tree, the classifiers (runs: ``report.runs``).

>>> print(models_table().splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
model  input  min  output (default size)  preprocessing
"""

from __future__ import annotations

from featstore.models.backbones import get_backbone, list_backbones, outer_calls, outer_output
from featstore.outputs import terminal_safe
from featstore.report.runs import (  # noqa: F401 (the run reports: their old home)
    accuracy_json,
    accuracy_lines,
    calibration_line,
    evaluated_lines,
    pair_report,
    run_report,
    runs_json,
    runs_table,
    split_lines,
    sweep_table,
)
from featstore.report.text import _table
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice

PROVENANCE_KEYS = (
    "model",
    "layer",
    "input_size",
    "pooling",
    "dtype",
    "compute_dtype",
    "feature_shape",
    "preprocess",
    "preprocess_description",
    "resize",
    "resize_description",
    "pillow_version",
    "weights_source",
    "weights_description",
    "weights_file",
    "weights_sha256",
    "keras_version",
    "tensorflow_version",
    "featstore_version",
    "created_at",
    "fingerprint",
)


def models_table() -> str:
    """One line per registered backbone: default input, minimum input, output shape, preprocessing."""
    rows = [["model", "input", "min", "output (default size)", "preprocessing"]]
    for name in list_backbones():
        s = get_backbone(name)
        rows.append(
            [
                name,
                f"{s.default_size}x{s.default_size}",
                str(s.min_size),
                str(s.output_shape(s.default_size)),
                f"{s.module}.preprocess_input ({s.preprocess_mode})",
            ]
        )
    return _table(rows) + "\n\n" + hub_families_table()


def hub_families_table() -> str:
    """The KerasHub families ``--model hub:<preset>`` (or a preset folder) takes: class, example presets, input, outputs.

    Reads nothing from KerasHub (no Keras import): ``featstore models hub:<preset>`` gives one preset's numbers.
    """
    from featstore.models.tokens import FAMILIES

    rows = [["KerasHub family", "class", "input", "outputs (--layer) and shapes (--pooling)", "presets, e.g."]]
    for f in FAMILIES.values():
        pools = "cls|mean (C,), cls+mean (2C,)" if f.has_cls else "mean (C,)"
        outputs = f"blockK|tokens: none (S/p, S/p, C), {pools}" + ("; embedding (E,)" if f.has_embedding else "")
        size = "preset's S; any multiple of p" if f.resizable else "preset's S only"
        rows.append([f.family, f.class_name, size, outputs, ", ".join(f"hub:{e}" for e in f.examples[:2])])
    return (
        _table(rows)
        + "\nKerasHub presets: pip install 'featstore[hub]'; --model hub:<preset> or --model PATH/ (a local "
        "preset folder); `featstore models hub:<preset> --layers` reads one preset's sizes (S, p, C, E)."
    )


def hub_table(model: str, layers: bool = False, image_size: int | None = None) -> str:
    """One KerasHub preset (named or a folder): its input, outputs and preprocessing; with ``layers``, every output
    --layer can name with its shape and the KerasHub block it is (nothing is built: the preset's config says it all)."""
    from featstore.models.hub import HubSpec

    spec = HubSpec.from_model(model)
    size = spec.default_size if image_size is None else image_size
    spec.validate(size, (), "none")
    if not layers:
        shapes = ", ".join(f"{p} {spec.output_shape(size, 'tokens', p)}" for p in spec.poolings)
        rows = [["model", "input", "patch", "tokens (--pooling)", "preprocessing"]]
        rows.append([spec.shown, f"{size}x{size}", str(spec.patch_size), shapes, spec.preprocess_name])
        return _table(rows)
    blocks = spec.family.block_names(spec.family.vision(_preset_config(spec)))
    rows = [["layer", "tokens (--pooling none)", "Keras layer (--unfreeze-from)", ""]]
    for i, name in enumerate(spec.layer_names()):
        shape = spec.output_shape(size, name, "none")
        what = blocks[i] if i < len(blocks) else "(final norm)" if name == "tokens" else "(projection)"
        rows.append([name, str(shape), what, "default cut" if name == spec.default_layer else ""])
    return _table(rows)


def _preset_config(spec) -> dict:
    """A preset's config.json as a dict: as it was read (bounded) and checked, never the file again."""
    import json

    return json.loads(spec.config_text)["config"]


def layers_table(model: str, image_size: int | None = None, trust_model: bool = False) -> str:
    """The named layers of a backbone or saved model with their output shapes (candidates for --layer).

    A registered backbone is built with random weights; a saved model is loaded as ``extract`` loads it, and
    the default cut (the layer before its last Dense layer where it ends in a classifier, else its output) is marked.
    """
    from featstore.models.saved import SavedModelSpec, input_dtype_note, is_model_path, no_default_cut

    default = None
    if is_model_path(model):
        spec = SavedModelSpec.from_path(model, trust_model=trust_model, check_dtype=False)  # listed, noted below
        size = spec.default_size if image_size is None else image_size  # another N is refused, not ignored
        base, default = spec.build(size)[0], spec.default_layer
        default = None if no_default_cut(base) else default  # a nested classifier, several: no cut (43 #11, 51 #3)
    else:
        from featstore.models.backbones import validate_size

        spec = get_backbone(model)
        size = spec.default_size if image_size is None else image_size  # --image-size 0 is refused, not the default
        validate_size(spec, size)
        base = spec.build(size, None)
    rows = [["layer", "output shape", ""]]
    for lyr in base.layers:  # (outer_output: a nested model's shape where this model calls it, 40 #7)
        calls = outer_calls(base, lyr)
        given = len(calls[0].output_tensors) if len(calls) == 1 else 1
        if len(calls) > 1:  # no one output: not a cut (attack 40 #14)
            shape, note = "several", f"called {len(calls)} times: not a cut"
        elif given > 1:  # a model with two outputs, attention returning its scores (attack 41 #2)
            shape, note = "several", f"{given} outputs: not a cut"
        else:
            shape, note = str(tuple(outer_output(base, lyr).shape[1:])), "default cut" if lyr.name == default else ""
        rows.append([lyr.name, shape, note])
    note = input_dtype_note(spec.input_dtype) if is_model_path(model) else None  # uint8: --preprocess none (58 #1)
    return _table(rows) + (f"\n{note}" if note else "")


def store_tree(path: str) -> str:
    """The store as an indented tree: provenance, splits with shapes, classes, counts and failures."""
    from featstore.experiments.leaks import leaks_line
    from featstore.store.lockholder import holder

    store = FeatureStore(path)
    info = store.info()
    writer = holder(path)  # the split it records writing is BEING WRITTEN; any other unfinished one is INCOMPLETE
    lines = [
        f"{info['path']}  (format_version {info['attrs'].get('format_version')}, featstore {info['attrs'].get('featstore_version')})"
    ]
    if not info["extractors"]:
        lines.append("  (no extractor yet)")
    for name, ex in info["extractors"].items():
        a = ex["attrs"]
        lines.append(f"└── /{terminal_safe(name)}   fingerprint {str(a.get('fingerprint', ''))[:12]}")
        if ex.get("error"):
            lines.append(f"    │   BROKEN: {ex['error']}")
        lines += [f"    │   {k}: {a[k]}" for k in PROVENANCE_KEYS if k in a and k != "fingerprint"]
        lines.append(f"    │   {leaks_line(path, name, ex)}")
        for split, s in ex["splits"].items():
            if "error" in s:
                lines.append(f"    ├── /{terminal_safe(split)}   BROKEN: {s['error']}")
                continue
            todo = f"{s.get('images_done')}/{s.get('n_images')} images done"
            state = _state(s, writer, name, split, todo, resume_advice(split))
            lines.append(f"    ├── /{terminal_safe(split)}   {state}")
            lines.append(f"    │     features {tuple(s['shape'])} {s['dtype']}, chunks {tuple(s['chunks'])}")
            lines.append(
                f"    │     rows {s.get('committed_rows')}, failed {s.get('n_failed')}, non-image files ignored {s.get('n_ignored', 0)}, "
                f"source {terminal_safe(str(s.get('source_root')))}"
            )
            classes = s.get("class_names", [])
            counts = s.get("class_counts", [])
            lines.append(
                f"    │     classes ({len(classes)}): "
                + ", ".join(f"{terminal_safe(c)} {n}" for c, n in zip(classes, counts))
            )
            if s.get("n_failed"):
                for p, reason in store.failures(split, name):
                    lines.append(f"    │     failed: {terminal_safe(p)}: {reason}")  # a file name: one line
            if "augmented" in s:
                lines.append(f"    │     {_augmented_line(s['augmented'], writer, name, split)}")
    return "\n".join(lines)


def _state(s: dict, writer, name: str, key: str, todo: str, advice: str, copies: bool = False) -> str:
    """``complete``, ``BEING WRITTEN by ...`` where the lock's holder ``writer`` records writing it (split ``key`` of
    group ``name``, its ``copies``), else ``INCOMPLETE`` with the resume ``advice`` (a killed split beside a live one)."""
    if s.get("complete"):
        return "complete"
    if writer is not None and writer.writes(name, key, copies=copies):
        return f"BEING WRITTEN by {f'pid {writer.pid}' if writer.pid else 'a featstore process'} ({todo})"
    return f"INCOMPLETE ({todo}; {advice})"


def _augmented_line(a: dict, writer, name: str, split: str) -> str:
    """One line on a split's augmented copies: count, spec, seed, rows, state."""
    if "error" in a:
        return f"augmented copies BROKEN: {a['error']}"
    todo = f"{a.get('images_done')}/{a.get('n_images')} rows done"
    advice = resume_advice(split, a.get("augment_copies") or True)
    state = _state(a, writer, name, split, todo, advice, copies=True)
    return (
        f"/augmented: {a.get('augment_copies')} copies ({a.get('augment_spec')}, seed {a.get('augment_seed')}), "
        f"rows {a.get('committed_rows')}, failed {a.get('n_failed')}, {state} (featstore fit --augmented)"
    )


def classifiers_table() -> str:
    """One block per registered classifier: description, parameters with defaults, default search grid."""
    from featstore.experiments.classifiers import get_classifier, list_classifiers

    lines = []
    for name in list_classifiers():
        spec = get_classifier(name)
        lines.append(f"{name}: {spec.description}")
        lines.append(
            "    params: "
            + ", ".join(
                f"{k}={p.default!r}" + (f" ({'|'.join(map(str, p.choices))})" if p.choices else "")
                for k, p in spec.params.items()
            )
        )
        lines.append("    search grid: " + (", ".join(f"{k}={v}" for k, v in spec.grid.items()) or "none"))
    return "\n".join(lines)

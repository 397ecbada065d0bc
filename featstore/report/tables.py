"""Plain-text reports for the CLI: the backbone table and the store tree.

>>> print(models_table().splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
model  input  min  output (default size)  preprocessing
"""

from __future__ import annotations

from featstore.models.backbones import get_backbone, list_backbones
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord
from featstore.store.reader import FeatureStore

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


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


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
    return _table(rows)


def layers_table(model: str, image_size: int | None = None, trust_model: bool = False) -> str:
    """The named layers of a backbone or saved model with their output shapes (candidates for --layer).

    A registered backbone is built with random weights; a saved model is loaded as ``extract`` loads it, and
    the default cut (the layer before its last Dense layer) is marked.
    """
    from featstore.models.saved import SavedModelSpec, is_model_path

    default = None
    if is_model_path(model):
        spec = SavedModelSpec.from_path(model, trust_model=trust_model)
        base, default = spec.build(spec.default_size)[0], spec.default_layer
    else:
        from featstore.models.backbones import validate_size

        spec = get_backbone(model)
        validate_size(spec, image_size or spec.default_size)
        base = spec.build(image_size or spec.default_size, None)
    rows = [["layer", "output shape", ""]]
    rows += [
        [lyr.name, str(tuple(lyr.output.shape[1:])), "default cut" if lyr.name == default else ""]
        for lyr in base.layers
    ]
    return _table(rows)


def store_tree(path: str) -> str:
    """The store as an indented tree: provenance, splits with shapes, classes, counts and failures."""
    from featstore.experiments.leaks import leaks_line
    from featstore.store.writer import lock_holder

    store = FeatureStore(path)
    info = store.info()
    writer_pid = lock_holder(path)
    lines = [
        f"{info['path']}  (format_version {info['attrs'].get('format_version')}, featstore {info['attrs'].get('featstore_version')})"
    ]
    if not info["extractors"]:
        lines.append("  (no extractor yet)")
    for name, ex in info["extractors"].items():
        a = ex["attrs"]
        lines.append(f"└── /{name}   fingerprint {str(a.get('fingerprint', ''))[:12]}")
        if ex.get("error"):
            lines.append(f"    │   BROKEN: {ex['error']}")
        lines += [f"    │   {k}: {a[k]}" for k in PROVENANCE_KEYS if k in a and k != "fingerprint"]
        lines.append(f"    │   {leaks_line(path, name, ex)}")
        for split, s in ex["splits"].items():
            if "error" in s:
                lines.append(f"    ├── /{split}   BROKEN: {s['error']}")
                continue
            todo = f"{s.get('images_done')}/{s.get('n_images')} images done"
            state = (
                "complete"
                if s.get("complete")
                else f"BEING WRITTEN by pid {writer_pid} ({todo})"
                if writer_pid
                else f"INCOMPLETE ({todo}; re-run the same extract to resume)"
            )
            lines.append(f"    ├── /{split}   {state}")
            lines.append(f"    │     features {tuple(s['shape'])} {s['dtype']}, chunks {tuple(s['chunks'])}")
            lines.append(
                f"    │     rows {s.get('committed_rows')}, failed {s.get('n_failed')}, non-image files ignored {s.get('n_ignored', 0)}, "
                f"source {s.get('source_root')}"
            )
            classes = s.get("class_names", [])
            counts = s.get("class_counts", [])
            lines.append(
                f"    │     classes ({len(classes)}): " + ", ".join(f"{c} {n}" for c, n in zip(classes, counts))
            )
            if s.get("n_failed"):
                for p, reason in store.failures(split, name):
                    lines.append(f"    │     failed: {p}: {reason}")
            if "augmented" in s:
                lines.append(f"    │     {_augmented_line(s['augmented'], writer_pid)}")
    return "\n".join(lines)


def _augmented_line(a: dict, writer_pid) -> str:
    """One line on a split's augmented copies: count, spec, seed, rows, state."""
    if "error" in a:
        return f"augmented copies BROKEN: {a['error']}"
    todo = f"{a.get('images_done')}/{a.get('n_images')} rows done"
    state = (
        "complete"
        if a.get("complete")
        else f"BEING WRITTEN by pid {writer_pid} ({todo})"
        if writer_pid
        else f"INCOMPLETE ({todo}; re-run the same extract --augment to resume)"
    )
    return (
        f"/augmented: {a.get('augment_copies')} copies ({a.get('augment_spec')}, seed {a.get('augment_seed')}), "
        f"rows {a.get('committed_rows')}, failed {a.get('n_failed')}, {state} (featstore fit --augmented)"
    )


def _acc(rec: RunRecord, split: str) -> str:
    acc = rec.accuracy(split)
    return "-" if acc is None else f"{acc:.4f}"


def _fingerprints(rec: RunRecord) -> str:
    """First 12 hex digits of each fingerprint (an ensemble lists one per distinct member extractor, joined by '+')."""
    return "+".join(f[:12] for f in rec.fingerprint.split("+"))


def runs_table(runs: list[RunRecord], broken: list[tuple[str, str]] = ()) -> str:
    """One line per run: id, classifier, chosen params, validation/test accuracy, seconds, extractor, fingerprint; then broken folders."""
    if not runs and not broken:
        return "no runs yet; fit one with `featstore fit --clf logreg`"
    rows = [["id", "clf", "params", "val_acc", "test_acc", "fit_s", "extractor", "fingerprint", "created"]]
    for r in runs:
        augmented = r.get("augmented")
        params = (kind_of(r).params_text(r) or "defaults") + (
            f" +{augmented['copies']} aug copies" if augmented else ""
        )
        rows.append(
            [
                r.id,
                r.clf,
                params,
                _acc(r, "validation"),
                _acc(r, "test"),
                f"{r.get('fit_seconds', 0):.2f}",
                r.extractor,
                _fingerprints(r),
                r.created_at[:19],
            ]
        )
    lines = [_table(rows)] if runs else ["no usable runs"]
    if broken:
        lines.append(f"{len(broken)} broken run folder(s), not used:")
        lines += [f"  {name}: {reason}" for name, reason in broken]
    return "\n".join(lines)


def run_report(rec: RunRecord, pngs: list, per_class: bool = True) -> str:
    """A run's details: setup, selection, metrics per split with a per-class table, and the plots written."""
    lines = [
        f"run {rec.id} ({rec.kind}), {rec.created_at}",
        f"  extractor {rec.extractor} fingerprint {rec.fingerprint}",
        f"  store {rec.get('store', '-')}",
        *kind_of(rec).describe(rec),
    ]
    lines += [f"  note: {note}" for note in rec.notes]
    for split, m in rec.metrics.items():
        lines.append(f"  {split}: accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, n {m.n}")
        rows = [["    class", "precision", "recall", "f1", "support"]]
        rows += [
            [f"    {c}", f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
            for c, v in m.per_class.items()
        ]
        if per_class:
            lines.append(_table(rows))
    lines += [f"  wrote {p}" for p in pngs]
    if not per_class:
        lines.append(f"  details: featstore runs show {rec.id}")
    return "\n".join(lines)


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


def sweep_table(summary: dict) -> str:
    """A sweep as a grid: extractors down, classifiers across, validation accuracy (test where evaluated); the winner marked."""
    clfs, cells = summary["classifiers"], {(c["extractor"], c["clf"]): c for c in summary["cells"]}
    win = summary["winner"]

    def cell(c: dict) -> str:
        text = f"{c['validation']:.4f}" + (f" / {c['test']:.4f}" if c["test"] is not None else "")
        return text + (" *" if c["run"] == win["id"] else "")

    rows = [["extractor \\ classifier"] + clfs]
    rows += [[name] + [cell(cells[(name, c)]) for c in clfs] for name in summary["extractors"]]
    lines = [
        f"{summary['id']}: validation accuracy"
        + (" / test accuracy" if any(c["test"] is not None for c in summary["cells"]) else "")
        + f" ({len(summary['cells'])} fits in {summary['seconds']:.1f} s; * = chosen)",
        _table(rows),
    ]
    if summary["ensemble"]:
        e = summary["ensemble"]
        lines.append(
            f"ensemble {e['run']}: validation {e['validation']:.4f}"
            + (f", test {e['test']:.4f}" if e["test"] is not None else "")
            + f"; members {', '.join(f'{m} x{w:g}' for m, w in zip(e['members'], e['weights']))}"
        )
    test = f", test {win['test']:.4f}" if win["test"] is not None else ""
    lines.append(
        f"chosen on validation: {win['id']} ({win['clf']} on {win['extractor']}): validation {win['validation']:.4f}{test}"
    )
    lines.append(f"selection: {summary['selection']}; heat map {summary['png']}")
    return "\n".join(lines)

"""Plain-text reports for the CLI: the backbone table and the store tree.

>>> print(models_table().splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
model  input  min  output (default size)  preprocessing
"""

from __future__ import annotations

from .backbones import get_backbone, list_backbones
from .store import FeatureStore

PROVENANCE_KEYS = ("model", "layer", "input_size", "pooling", "dtype", "feature_shape", "preprocess", "resize",
                   "weights_source", "weights_description", "weights_file", "weights_sha256", "keras_version",
                   "tensorflow_version", "featstore_version", "created_at", "fingerprint")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def models_table() -> str:
    """One line per registered backbone: default input, minimum input, output shape, preprocessing."""
    rows = [["model", "input", "min", "output (default size)", "preprocessing"]]
    for name in list_backbones():
        s = get_backbone(name)
        rows.append([name, f"{s.default_size}x{s.default_size}", str(s.min_size), str(s.output_shape(s.default_size)),
                     f"{s.module}.preprocess_input ({s.preprocess_mode})"])
    return _table(rows)


def layers_table(model: str, image_size: int | None = None) -> str:
    """The named layers of a backbone with their output shapes (candidates for --layer); builds it with random weights."""
    spec = get_backbone(model)
    base = spec.build(image_size or spec.default_size, None)
    rows = [["layer", "output shape"]]
    rows += [[lyr.name, str(tuple(lyr.output.shape[1:]))] for lyr in base.layers]
    return _table(rows)


def store_tree(path: str) -> str:
    """The store as an indented tree: provenance, splits with shapes, classes, counts and failures."""
    store = FeatureStore(path)
    info = store.info()
    lines = [f"{info['path']}  (format_version {info['attrs'].get('format_version')}, featstore {info['attrs'].get('featstore_version')})"]
    if not info["extractors"]:
        lines.append("  (no extractor yet)")
    for name, ex in info["extractors"].items():
        a = ex["attrs"]
        lines.append(f"└── /{name}   fingerprint {str(a.get('fingerprint', ''))[:12]}")
        lines += [f"    │   {k}: {a[k]}" for k in PROVENANCE_KEYS if k in a and k != "fingerprint"]
        for split, s in ex["splits"].items():
            state = "complete" if s.get("complete") else f"INCOMPLETE ({s.get('images_done')}/{s.get('n_images')} images done; re-run the same extract to resume)"
            lines.append(f"    ├── /{split}   {state}")
            lines.append(f"    │     features {tuple(s['shape'])} {s['dtype']}, chunks {tuple(s['chunks'])}")
            lines.append(f"    │     rows {s.get('committed_rows')}, failed {s.get('n_failed')}, source {s.get('source_root')}")
            classes = s.get("class_names", [])
            lines.append(f"    │     classes ({len(classes)}): {', '.join(classes)}")
            if s.get("n_failed"):
                for p, reason in store.failures(split, name):
                    lines.append(f"    │     failed: {p}: {reason}")
    return "\n".join(lines)

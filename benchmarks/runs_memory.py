"""Peak memory of the commands that use runs' stored predictions at 1,000 classes (issue 21): ``runs compare`` (the
paired test of two runs) and ``ensemble`` (the weighted average of two runs, recorded as a run).

Builds once (cached in --dir) a runs folder of two fitted-classifier runs, each with --rows validation and --rows
test rows of 1,000-class float64 probabilities in its predictions.npz (800 MB a split at 100,000 rows), each
calibrated by a temperature, written a block at a time through featstore's own ``RunDraft``. Then, each in a fresh
process, runs ``compare_pair`` and ``ensemble`` and reads the process's peak RSS over the call alone
(``/proc/self/clear_refs`` resets the high-water mark as the call starts, ``VmHWM`` is read as it returns; imports are
not counted). ``--code`` runs another checkout's featstore (e.g. main, for the figures before a change) on the same
runs; the ensemble each call records is removed afterwards.

    python benchmarks/runs_memory.py --rows 100000                     # this checkout
    python benchmarks/runs_memory.py --rows 100000 --code /work/main   # the same with main's code
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLASSES = 1000
BLOCK = 4096  # rows written at a time while building

CALL = r"""
import json, sys, time

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024

from featstore.experiments.compare import compare_pair
from featstore.experiments.ensemble import ensemble
what, runs = sys.argv[1], sys.argv[2]
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak RSS starts again from the current RSS
start, t = status("VmRSS"), time.perf_counter()
if what == "compare":
    c = compare_pair("run-a", "run-b", runs=runs)
    said = c.splits["test"].comparison.sentence()
else:
    rec = ensemble(["run-a", "run-b"], weights=[1, 2], runs=runs)
    said = f"{rec.id}: test accuracy {rec.metrics['test'].accuracy:.4f}"
print(json.dumps({"start": start, "peak": status("VmHWM"), "seconds": time.perf_counter() - t, "said": said}))
"""


def build(root: Path, rows: int) -> None:
    """Two runs (cached): run-a and run-b, right on about 60 % and 55 % of the rows."""
    sys.path.insert(0, str(HERE.parent))
    from featstore.experiments.classifiers import build_classifier
    from featstore.runs.write import RunDraft
    from featstore.stats.calibration import fit_temperature
    from featstore.store.writer import synthetic_attrs

    stamp = root / "built.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"rows": rows}:
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    est = build_classifier("logreg").fit(np.arange(8.0).reshape(4, 2), [0, 1, 2, 3])
    y = np.random.default_rng(0).integers(0, CLASSES, rows)

    def block(seed: int, a: int, right: float) -> np.ndarray:
        rng = np.random.default_rng([seed, a])
        yb = y[a : a + BLOCK]
        p = rng.random((len(yb), CLASSES)) ** 4
        hit = rng.random(len(yb)) < right
        p[np.flatnonzero(hit), yb[hit]] += 2 * p.sum(axis=1)[hit] / CLASSES * 50
        return p / p.sum(axis=1, keepdims=True)

    for seed, (name, right) in enumerate((("run-a", 0.6), ("run-b", 0.55))):
        sample = np.concatenate([block(seed, a, right) for a in range(0, min(rows, 2 * BLOCK), BLOCK)])
        record = {
            "kind": "fit",
            "id": name,
            "clf": "logreg",
            "created_at": f"2026-01-01T00:00:0{seed}",
            "store": "s",
            "extractor": "e",
            "fingerprint": synthetic_attrs((2,))["fingerprint"],
            "class_names": [f"c{i:03d}" for i in range(CLASSES)],
            "metrics": {},
            "params": {},
            "extractor_attrs": synthetic_attrs((2,)),
            "calibration": {**fit_temperature(sample, y[: len(sample)]), "fitted_on": "validation"},
        }
        with RunDraft(root, name) as draft:
            for split in ("validation", "test"):
                with draft.predictions.probabilities(split, rows, CLASSES) as member:
                    for a in range(0, rows, BLOCK):
                        member.write(block(seed, a, right))
                draft.predictions.labels(split, y, "paths", "listing")
            draft.finish(record, est)
    stamp.write_text(json.dumps({"rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows of validation and of test")
    ap.add_argument("--code", type=Path, default=HERE.parent, help="the checkout whose featstore runs the commands")
    ap.add_argument("--only", default="compare,ensemble", help="which of compare, ensemble")
    ap.add_argument("--dir", type=Path, default=None, help="cache folder (default /work/bench_cache or $TMPDIR)")
    args = ap.parse_args()
    base = args.dir or (
        Path("/work/bench_cache") if Path("/work/bench_cache").is_dir() else Path(tempfile.gettempdir())
    )
    runs = base / f"runs-memory-{args.rows}"
    build(runs, args.rows)
    mb = args.rows * CLASSES * 8 / 1e6
    print(
        f"runs {runs}: 2 runs, validation and test of {args.rows} rows x {CLASSES} classes ({mb:.0f} MB of float64 "
        f"probabilities a split); code {args.code}; load {os.getloadavg()[0]:.1f}"
    )
    env = {**os.environ, "PYTHONPATH": str(args.code), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for what in args.only.split(","):
        before = set(os.listdir(runs))
        res = subprocess.run(
            [sys.executable, "-c", CALL, what, str(runs)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        for new in set(os.listdir(runs)) - before:  # the ensemble just recorded: the next call makes its own
            shutil.rmtree(runs / new)
        if res.returncode != 0:
            print(f"  {what}: failed\n{res.stderr[-2000:]}")
            continue
        out = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"  {what:<8} peak RSS over the call +{out['peak'] - out['start']:6.0f} MB (RSS {out['start']:.0f} MB at "
            f"its start), {out['seconds']:6.1f} s | {out['said']}"
        )


if __name__ == "__main__":
    main()

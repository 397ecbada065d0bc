"""`featstore runs` on a folder of 1,000 runs, 50 of them fine-tuned with model files of tens of MB (issue 17, item 5).

Builds once (cached in --dir; default ``<tmp>/featstore-runs-listing``) a store of synthetic 10-class features
and a runs folder: two real fits (logreg and dense) are cloned into --runs minus --finetuned fitted runs, and a
fine-tuned run's record (made from the dense run's, as `featstore finetune` writes it) into --finetuned runs, each
with its own id and folder. Every fine-tuned run holds a model.keras of --model-mb MB of real bytes (a zip whose
weights member is random bytes, allocated on disk: not a sparse file). A VGG16 fine-tuned from block5 saves about
59 MB. Then, interleaved over --repeats rounds (median printed), it times:

  bare        os.scandir + json.load of every run.json: the floor, what reading the records alone costs
  list_runs   the API: read each run.json (size checked first), validate it, check its files are regular files
  cli         `featstore runs` in this process (typer's CliRunner): list_runs and the table
  command     `python -m featstore.cli runs` in a new process: interpreter start and imports included
  get_run     using one fine-tuned run: its model.keras hashed and checked, its predictions read
  verify all  list_runs plus verifying every run as get_run does (what every command paid before, once)

and each one's ratio to bare. The issue's target: `featstore runs` with 50 fine-tuned runs in under 1 s.

    python benchmarks/runs_listing.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
FINETUNE_PARAMS = {
    "unfreeze_from": "block5_conv1",
    "lr": 1e-5,
    "optimizer": "rmsprop",
    "epochs": 15,
    "batch_size": 20,
    "patience": 3,
    "augment": "",
    "seed": 0,
    "from_scratch_head": False,
    "cache": True,
}


def _store(path: Path) -> None:
    """10 classes of 64-d features: train 500, validation 200, test 200 rows."""
    from featstore.store import writer

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (10, 64)).astype(np.float32)
    for split, n in (("train", 500), ("validation", 200), ("test", 200)):
        y = np.arange(n) % 10
        X = centers[y] + rng.normal(0, 2, (n, 64)).astype(np.float32)
        names = [f"class{i}" for i in range(10)]
        writer.write_arrays(path, "synthetic", split, X, y, names, attrs=writer.synthetic_attrs((64,)))


def _model_file(path: Path, mb: int) -> None:
    """A zip laid out as a .keras file whose weights member holds ``mb`` MB of random bytes (stored, as Keras does)."""
    block = np.random.default_rng(1).bytes(10**6)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3"}))
        z.writestr("config.json", json.dumps({"class_name": "Functional"}))
        with z.open("model.weights.h5", "w", force_zip64=True) as fh:
            for _ in range(mb):
                fh.write(block)


def _clone(src: Path, dst: Path, changes: dict) -> None:
    """A copy of run folder ``src`` as ``dst`` (run.json's id set to the folder's name, ``changes`` applied)."""
    shutil.copytree(src, dst)
    rec = json.loads((src / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**rec, **changes, "id": dst.name}, indent=1))


def build(folder: Path, n_runs: int, n_finetuned: int, model_mb: int) -> tuple[Path, Path]:
    """(store, runs folder), built unless ``folder`` holds them already (the same sizes)."""
    from featstore import fit
    from featstore.runs.files import sha256_of

    store, runs = folder / "features.h5", folder / "runs"
    stamp = folder / "built.json"
    want = {"runs": n_runs, "finetuned": n_finetuned, "model_mb": model_mb}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return store, runs
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _store(store)
    seeds = folder / "seeds"
    logreg = fit(store, "logreg", runs=seeds)
    dense = fit(store, "dense", {"epochs": [3]}, runs=seeds)
    model = folder / "model.keras"
    _model_file(model, model_mb)
    digest = sha256_of(model)
    runs.mkdir()
    for i in range(n_runs - n_finetuned):
        src = seeds / (logreg if i % 2 else dense)["id"]
        _clone(
            src,
            runs / f"{'logreg' if i % 2 else 'dense'}-{i:06x}",
            {"created_at": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+0000"},
        )
    for i in range(n_finetuned):
        dst = runs / f"finetune-{i:06x}"
        _clone(
            seeds / dense["id"],
            dst,
            {
                "kind": "finetune",
                "clf": "finetune",
                "created_at": f"2026-01-02T00:00:{i % 60:02d}+0000",
                "params": FINETUNE_PARAMS,
                "from_run": dense["id"],
                "unfreeze_from": "block5_conv1",
                "trainable_layers": ["block5_conv1", "block5_conv2", "block5_conv3", "head_dense", "head_out"],
                "cached_cut": "synthetic@block4_pool",
                "weights_digest": "0" * 64,
                "seconds_per_epoch": 12.5,
                "phase_a_history": dense["history"],
                "artifact": {"file": "model.keras", "format": "keras-model", "sha256": digest},
            },
        )
        for extra in ("head.json",):
            (dst / extra).unlink(missing_ok=True)
        (dst / "model.keras").unlink()
        shutil.copyfile(model, dst / "model.keras")
    stamp.write_text(json.dumps(want))
    return store, runs


def bare(runs: Path) -> int:
    """os.scandir + json.load of every run.json: how many were read."""
    n = 0
    for entry in os.scandir(runs):
        if entry.is_dir() and not entry.name.startswith("."):
            with open(os.path.join(entry.path, "run.json"), "rb") as fh:
                json.load(fh)
            n += 1
    return n


def timed(times: list[float], fn):
    """``fn()``, its seconds appended to ``times``."""
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "featstore-runs-listing")
    ap.add_argument("--runs", type=int, default=1000, help="run folders in all")
    ap.add_argument("--finetuned", type=int, default=50, help="of which fine-tuned runs")
    ap.add_argument("--model-mb", type=int, default=59, help="size of each fine-tuned run's model.keras, MB")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from typer.testing import CliRunner

    from featstore import get_run, list_runs
    from featstore.cli import app
    from featstore.runs.folder import verify_run

    t0 = time.perf_counter()
    store, runs = build(args.dir, args.runs, args.finetuned, args.model_mb)
    built = time.perf_counter() - t0
    found = list_runs(store, runs)
    assert len(found) == args.runs, f"{len(found)} usable runs of {args.runs}: see `featstore runs --runs {runs}`"
    one = next(r.id for r in found if r.kind == "finetune")
    cmd = [sys.executable, "-m", "featstore.cli", "runs", "--store", str(store), "--runs", str(runs)]
    times: dict[str, list[float]] = {k: [] for k in ("bare", "list_runs", "cli", "command", "get_run", "verify all")}
    for _ in range(args.repeats):
        timed(times["bare"], lambda: bare(runs))
        timed(times["list_runs"], lambda: list_runs(store, runs))
        res = timed(times["cli"], lambda: CliRunner().invoke(app, cmd[3:]))
        assert res.exit_code == 0 and one in res.output, res.output[-2000:]
        timed(times["command"], lambda: subprocess.run(cmd, env=ENV, check=True, capture_output=True))
        timed(times["get_run"], lambda: get_run(one, store, runs))
        timed(times["verify all"], lambda: [verify_run(r, runs / r.id) for r in list_runs(store, runs)])
    med = {k: statistics.median(v) for k, v in times.items()}
    model = f"{args.model_mb} MB model.keras files (real bytes)"
    print(
        f"{args.runs} runs in {runs}, {args.finetuned} fine-tuned with {model}; "
        f"{'built' if built > 5 else 'cached'} ({built:.1f} s); median of {args.repeats} rounds, side by side"
    )
    for k, v in times.items():
        print(
            f"  {k:<11} {med[k]:7.3f} s  x{med[k] / med['bare']:6.1f} bare   (rounds: {', '.join(f'{x:.3f}' for x in v)})"
        )
    verdict = "meets" if med["command"] < 1 else "misses"
    print(
        f"featstore runs: {med['command']:.2f} s as a command, {med['cli']:.2f} s in-process ({verdict} the target < 1 s)"
    )


if __name__ == "__main__":
    main()

"""A million images on one machine (issue 21): every command at 10⁶ rows, each figure beside its limit, same run.

Builds once, cached in --dir (``benchmarks/million_build.py``): a store of --rows pooled 512-d float16 rows and one
of --rows / 5 rows of (4, 4, 512) float32, 1,000 classes, train/validation/test; an interrupted --rows-image split
with its listing; --rows / 10 real tiny files; 1,000 runs, 50 fine-tuned. Then each figure is measured in a fresh
process (its peak RSS printed too) beside the limit it is compared with, measured the same way in the same run:

  seq read   a plain sequential h5py read of the same dataset, in blocks of whole chunks (the I/O floor)
  gemm       numpy float32 matrix products of the same shapes (the arithmetic floor of a search)
  scandir    os.scandir + stat of the same folders (the floor of a listing); bare json.load of run.json files

A part that does not exist yet prints "not built"; a figure that misses its target says so and what limits it.

    python benchmarks/million.py --rows 100000            # about 10 minutes once built
    python benchmarks/million.py                          # 10⁶ rows: the build takes a while, then cached
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from million_build import build  # noqa: E402
from out_of_core import peak_rss  # noqa: E402

SEQ = """import sys, time, h5py, numpy as np
t = time.perf_counter()
with h5py.File(sys.argv[1], "r") as f:
    ds = f[sys.argv[2]]["features"]
    n = int(f[sys.argv[2]].attrs["commit"][0])
    step = max(1, (64 << 20) // (ds.chunks[0] * ds.dtype.itemsize * int(np.prod(ds.shape[1:])))) * ds.chunks[0]
    for i in range(0, n, step):
        ds[i : i + step]
out = {"seconds": time.perf_counter() - t}"""
CLI = """import sys, time
from typer.testing import CliRunner
from featstore.cli import app
t = time.perf_counter()
r = CliRunner().invoke(app, sys.argv[1:])
assert r.exit_code in (0, 1), r.output[-2000:]
out = {"seconds": time.perf_counter() - t, "exit": r.exit_code, "tail": r.output[-300:]}"""
RESUME = """import sys, time
from pathlib import Path
from million_build import fake_listing, resume_attrs, POOLED
from featstore.store.writer import SplitWriter, StoreFile, ensure_space, synthetic_attrs
from featstore.store.compact import compact
from featstore.store.layout import check_root, listing_columns
from featstore.store.survey import split_done, survey
path, n = Path(sys.argv[1]), int(sys.argv[2])
t = time.perf_counter()
listing = fake_listing(path.parent / "files", n)   # what discover returns (its walk is measured apart)
t_list = time.perf_counter() - t
import resource
rss_listing = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB: imports and the listing, before any work
t0 = time.perf_counter()
store = StoreFile(path)
with store.read_if_exists() as f:
    check_root(f, path)
    found = survey(f, path, ["pooled"], "train", lambda f, n: split_done(f, path, n, "train", lambda a: True, listing))
attrs = resume_attrs(listing, 4096)
t1 = time.perf_counter()
if found.interrupted:
    compact(store)
t2 = time.perf_counter()
ensure_space(path, 1 << 20, found.done)
w = SplitWriter(store, ["pooled"], "train")
w.prepare([synthetic_attrs(POOLED, "float16")], attrs, False, listing)
t3 = time.perf_counter()
rss_decision = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the decision's peak, before the digest part
assert w.start == found.done > 0, (w.start, found.done)
fresh = fake_listing(path.parent / "files", n)  # the digest is kept once computed: time it on a new listing
t4 = time.perf_counter()
fresh.digest()
t5 = time.perf_counter()
listing.sizes[len(listing.sizes) // 2] += 1  # one image changed
with store.open("r") as f:
    cols = listing_columns(f["pooled"]["train"])
    for _ in cols.blocks():  # the stored listing read once, in blocks (the diff reads it itself)
        pass
    t6 = time.perf_counter()
    d = listing.diff(cols)
    t7 = time.perf_counter()
assert d.counts == (0, 0, 1), d.counts
out = {"seconds": t3 - t0, "checks": t1 - t0, "compact": t2 - t1, "prepare": t3 - t2, "digest": t5 - t4,
       "read_listing": t6 - t5, "diff": t7 - t6, "fake_listing": t_list, "rows": found.done, "rss_listing": rss_listing,
       "rss_decision": rss_decision}"""
LISTING_FLOOR = """import sys, time, numpy as np
from million_build import fake_listing
from pathlib import Path
listing = fake_listing(Path(sys.argv[1]).parent / "files", int(sys.argv[2]))
cols = [np.array([p for p, _ in listing.items], dtype="S"), np.array([l for _, l in listing.items]),
        np.array(listing.sizes), np.array(listing.mtimes_ns)]
other = [c.copy() for c in cols]
t = time.perf_counter()
same = all(np.array_equal(a, b) for a, b in zip(cols, other))
out = {"seconds": time.perf_counter() - t}"""
DISCOVER = """import sys, time
from featstore.images.listing import discover
t = time.perf_counter()
n = len(discover(sys.argv[1], "train").items)
out = {"seconds": time.perf_counter() - t, "n": n}"""
WALK = """import os, sys, time
t = time.perf_counter()
n = 0
for c in sorted(os.scandir(os.path.join(sys.argv[1], "train")), key=lambda e: e.name):
    for e in sorted(os.scandir(c.path), key=lambda e: e.name):
        e.stat(); n += 1
out = {"seconds": time.perf_counter() - t, "n": n}"""
FIT = """import sys, time
from featstore import fit
from featstore.errors import FeatstoreError
t = time.perf_counter()
try:
    r = fit(sys.argv[1], sys.argv[2], {"epochs": [int(sys.argv[3])]} if sys.argv[2] != "logreg" else None,
            memory_budget=sys.argv[4], runs=sys.argv[5], jobs=int(sys.argv[6]))
    out = {"seconds": time.perf_counter() - t, "fit_seconds": r["fit_seconds"], "streamed": r["streamed"],
           "acc": r["metrics"]["validation"]["accuracy"]}
except FeatstoreError as exc:
    out = {"refused": str(exc)[:300]}"""
BASE = """import sys, featstore, sklearn.linear_model
from featstore import FeatureStore
if sys.argv[2] == "dense":
    import keras, tensorflow
FeatureStore(sys.argv[1]).split_info("train"); out = {}"""
GEMM = """import sys, time, numpy as np
q, n, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
A = rng.random((q, d), dtype=np.float32); B = rng.random((n, d), dtype=np.float32)
A @ B[:256].T
t = time.perf_counter()
for _ in range(3):
    A @ B.T
s = (time.perf_counter() - t) / 3
out = {"seconds": s, "gflops": 2 * q * n * d / s / 1e9}"""
LEAKS = """import sys, time
from featstore import find_leaks
t = time.perf_counter()
r = find_leaks(sys.argv[1], query=["query"], compare_bytes=False, record=False)
out = {"seconds": time.perf_counter() - t}"""
SIMILAR = """import sys, time
from featstore import similar
t = time.perf_counter()
r = similar(sys.argv[1], sys.argv[2], k=10, use_index=sys.argv[3] == "index")
out = {"seconds": time.perf_counter() - t, "rows": [n.row for n in r.neighbours]}"""
INDEX = """import sys, time
from featstore import build_similarity_index
t = time.perf_counter()
build_similarity_index(sys.argv[1], split="train")
out = {"seconds": time.perf_counter() - t}"""
RECALL = """import sys, time
from featstore import similar
hits, t_exact, t_index = [], 0.0, 0.0
for i in range(int(sys.argv[2])):
    q = f"query/{i * 37}"
    t = time.perf_counter(); e = {n.row for n in similar(q, sys.argv[1], k=10, use_index=False).neighbours}
    t_exact += time.perf_counter() - t
    t = time.perf_counter(); x = {n.row for n in similar(q, sys.argv[1], k=10, use_index=True).neighbours}
    t_index += time.perf_counter() - t
    hits.append(len(e & x) / 10)
out = {"recall": sum(hits) / len(hits), "exact": t_exact / len(hits), "index": t_index / len(hits), "seconds": 0}"""
EXPORT = """import sys, time, inspect
from featstore import export
t = time.perf_counter()
r = export(sys.argv[1], sys.argv[2], sys.argv[3])
out = {"seconds": time.perf_counter() - t, "rows": r.rows}"""
PARQUET_FLOOR = """import sys, time, h5py, numpy as np, pyarrow as pa, pyarrow.parquet as pq
with h5py.File(sys.argv[1], "r") as f:
    g = f[sys.argv[2]]
    n = int(g.attrs["commit"][0])
    X, y, p = g["features"][:n], g["labels"][:n], [s.decode() for s in g["paths"][:n]]
t = time.perf_counter()
Xf = X.reshape(n, -1).astype(np.float32)
table = pa.table({"path": pa.array(p, pa.string()), "label": pa.array(y, pa.int64()),
                  "features": pa.FixedSizeListArray.from_arrays(pa.array(Xf.reshape(-1)), Xf.shape[1])})
pq.write_table(table, sys.argv[3])
out = {"seconds": time.perf_counter() - t}"""
READ_BACK = """import sys, time
import pyarrow.parquet as pq, numpy as np
t = time.perf_counter()
table = pq.read_table(sys.argv[1])
t1 = time.perf_counter()
df = table.to_pandas()
X = np.stack(df["features"].to_numpy())
out = {"seconds": t1 - t, "pandas": time.perf_counter() - t1, "rows": len(df)}"""
MAP = """import sys, time
from featstore.experiments.projection import project
t = time.perf_counter()
p = project(sys.argv[1], max_rows=int(sys.argv[2]))
out = {"seconds": time.perf_counter() - t, "method": f"{p.method}, " + ", ".join(f"{k} {v}" for k, v in p.settings.items())[:60]}"""
SAMPLE_READ = """import sys, time, numpy as np
from featstore import FeatureStore
from featstore.experiments.leaks.search import query_blocks
from featstore.experiments.projection import sample_rows
fs = FeatureStore(sys.argv[1])
rows = {s: int(fs.split_info(s)["committed_rows"]) for s in fs.splits()}
t = time.perf_counter()
for s, pick in sample_rows(rows, int(sys.argv[2]), 0).items():
    if len(pick):
        list(query_blocks(fs, "pooled", s, 64 << 20, pick))
out = {"seconds": time.perf_counter() - t}"""


PARTS = ("store", "runs", "resume", "fits", "maps-fit", "dense", "leaks", "similar", "index", "export", "map")


class Table:
    """Figures printed as they come: value, limit, ratio, target, verdict."""

    def __init__(self):
        self.missed: list[str] = []

    def row(self, what, secs, limit_name, limit, target=None, why="", rss=None, note="", max_s=None):
        ratio = secs / limit if limit else float("nan")
        verdict = ""
        if target is not None or max_s is not None:
            ok = ratio <= target if target is not None else secs <= max_s
            goal = f"<= {target:g}x" if target is not None else f"< {max_s:g} s"
            verdict = f"  target {goal}: {'met' if ok else 'MISSED'}"
            if not ok:
                self.missed.append(
                    f"{what}: {secs:.2f} s = {ratio:.2f}x {limit_name} (target {goal}); limited by {why}"
                )
        mem = f"  peak RSS {rss:5.0f} MB" if rss is not None else ""
        print(
            f"  {what:<38} {secs:9.2f} s  | {limit_name} {limit:8.2f} s | {ratio:7.2f}x{verdict}{mem}{note}", flush=True
        )

    def absolute(self, what, value, unit, target_text, ok, why="", note=""):
        print(f"  {what:<38} {value:9.3g} {unit} | {target_text}: {'met' if ok else 'MISSED'}{note}", flush=True)
        if not ok:
            self.missed.append(f"{what}: {value:.3g} {unit} ({target_text}); limited by {why}")

    @staticmethod
    def not_built(what, why):
        print(f"  {what:<38} not built ({why})", flush=True)


def median_runs(repeats: int, *pairs):
    """Interleaved rounds of several fresh-process measurements; per measurement (median seconds, last rss, last out)."""
    got = [[] for _ in pairs]
    for _ in range(repeats):
        for k, (code, args) in enumerate(pairs):
            rss, out = peak_rss(code, *[str(a) for a in args])
            got[k].append((out.get("seconds", 0.0), rss, out))
    return [(statistics.median(s for s, _, _ in g), g[-1][1], g[-1][2]) for g in got]


def index_figures(t: Table, pooled: Path, s: float, rr: int) -> None:
    """Build the similarity index, then one indexed query and recall@10 against exact search."""
    rss, io = peak_rss(INDEX, str(pooled))
    t.row("similarity index build", io["seconds"], "seq read", s, 3.0, "a PCA sample and one pass", rss)
    ((ix, ixrss, _),) = median_runs(rr, (SIMILAR, ["query/5", pooled, "index"]))
    t.absolute("similar with the index (1 query)", ix, "s", "target < 1 s", ix < 1, "reading every reduced vector")
    _, ro = peak_rss(RECALL, str(pooled), "10")
    t.absolute(
        "index recall@10 vs exact (10 queries)",
        ro["recall"],
        "",
        "target >= 0.95",
        ro["recall"] >= 0.95,
        "the PCA reduction",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="pooled rows; the (4, 4, 512) store has a fifth")
    ap.add_argument("--dir", type=Path, default=None, help="cache folder (default /work/bench_cache or $TMPDIR)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the cheap figures (medians printed)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the streamed fits")
    ap.add_argument(
        "--jobs", type=int, default=os.cpu_count(), help="fit --jobs (sgd's classes on threads; default: CPUs)"
    )
    ap.add_argument("--budget", default=None, help="--memory-budget of the fits (default 512MB x rows / 10⁶)")
    ap.add_argument("--model-mb", type=int, default=10, help="model.keras size of each fine-tuned run")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {','.join(PARTS)}")
    ap.add_argument("--only", default="", help=f"comma-separated parts to run, all others skipped: {','.join(PARTS)}")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip |= set(PARTS) - set(args.only.split(","))
    base = args.dir or (
        Path("/work/bench_cache") if Path("/work/bench_cache").is_dir() else Path(tempfile.gettempdir())
    )
    folder = base / f"million-{args.rows}"
    t0 = time.perf_counter()
    paths = build(folder, args.rows, args.model_mb)
    built = time.perf_counter() - t0
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    pooled, maps, resume = paths["pooled.h5"], paths["maps.h5"], paths["resume.h5"]
    rr = args.repeats
    from featstore import FeatureStore

    fs = FeatureStore(pooled)
    n_train = int(fs.split_info("train")["committed_rows"])
    n_query = int(fs.split_info("query")["committed_rows"])
    n_maps = int(FeatureStore(maps).split_info("train")["committed_rows"])
    sizes = {p.name: p.stat().st_size / 1e9 for p in (pooled, maps, resume)}
    print(
        f"million.py --rows {args.rows} ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}): {folder} {'built in ' + format(built, '.0f') + ' s' if paths['built_seconds'] else 'cached'}; "
        + ", ".join(f"{k} {v:.2f} GB" for k, v in sizes.items())
        + f"; train {n_train} x 512 float16, maps train {n_maps} x (4,4,512) float32; medians of {rr} rounds "
        "for cheap figures, 1 round otherwise; every figure in a fresh process",
        flush=True,
    )
    t = Table()
    total_pooled = sum(int(fs.split_info(s)["committed_rows"]) for s in fs.splits()) * 1024

    if "store" not in skip:
        store_figures(t, rr, pooled, total_pooled, n_train)
    if "runs" not in skip:
        runs_figures(t, rr, paths)
    if "resume" not in skip:
        resume_figures(t, rr, paths, args.rows)
    if "fits" not in skip:
        fit_figures(t, args, skip, folder, pooled, maps)
    print(f"leaks and similar on pooled train ({n_train} x 512; leaks queries: the {n_query}-row 'query' split)")
    if "leaks" in skip:
        t.not_built("leaks", "skipped (--skip)")
    else:
        leaks_figures(t, pooled, n_query, n_train)
    if "similar" not in skip:
        (s, _, _), (ex, exrss, _) = median_runs(
            rr, (SEQ, [pooled, "pooled/train"]), (SIMILAR, ["query/5", pooled, "exact"])
        )
        t.row(
            "similar, exact (1 stored query)", ex, "seq read", s, 1.5, "two passes (the mean, then the products)", exrss
        )
    if "index" in skip:
        t.not_built("similarity index", "skipped (--skip)")
    else:
        ((s, _, _),) = median_runs(1, (SEQ, [pooled, "pooled/train"]))
        index_figures(t, pooled, s, rr)
    if "export" not in skip:
        export_figures(t, folder, pooled)
    print("report: the embedding map (5,000 sampled rows)")
    if "map" in skip:
        t.not_built("embedding map", "skipped (--skip)")
    else:
        (sr, _, _), (mp, mrss, mo) = median_runs(1, (SAMPLE_READ, [pooled, 5000]), (MAP, [pooled, 5000]))
        t.row(f"projection ({mo['method']})", mp, "sample read", sr, None, rss=mrss)
    print(
        f"\nthe whole run took {(time.perf_counter() - t0) / 60:.1f} min (store build included: "
        f"{built / 60:.1f} min; load now {os.getloadavg()[0]:.1f})"
    )
    print("\nfigures that miss their target:" if t.missed else "\nevery figure meets its target")
    for m in t.missed:
        print("  - " + m)


def store_figures(t: Table, rr: int, pooled: Path, total_pooled: int, n_train: int) -> None:
    print("store commands (pooled.h5; limit: a sequential h5py read of its train features)")
    (seq, _, _), (info, irss, _), (chk, crss, cout) = median_runs(
        rr, (SEQ, [pooled, "pooled/train"]), (CLI, ["info", pooled]), (CLI, ["check", pooled])
    )
    t.row("info", info, "seq read", seq, None, "reading whole datasets", irss, max_s=1)
    whole = seq * total_pooled / (n_train * 1024)
    t.row(
        "check (reads every row)",
        chk,
        "seq read of all",
        whole,
        1.5,
        "per-row work in Python (paths)",
        crss,
        note=f"  exit {cout['exit']}",
    )


def runs_figures(t: Table, rr: int, paths: dict) -> None:
    print("runs (1,000 runs, 50 fine-tuned; limit: os.scandir + json.load of every run.json)")
    from runs_listing import bare

    from featstore import list_runs

    rs, rl = paths["runs-listing"] / "features.h5", paths["runs-listing"] / "runs"
    (b, _, _), (cli, rrss, _) = median_runs(
        rr,
        (
            "import sys, time\nfrom runs_listing import bare\nt = time.perf_counter(); bare(__import__('pathlib').Path(sys.argv[1]))\nout = {'seconds': time.perf_counter() - t}",
            [rl],
        ),
        (CLI, ["runs", "--store", rs, "--runs", rl]),
    )
    assert len(list_runs(rs, rl)) == 1000 and bare(rl) == 1000
    t.row("featstore runs (in-process CLI)", cli, "bare json", b, None, "validating every record", rrss, max_s=1)


def resume_figures(t: Table, rr: int, paths: dict, rows: int) -> None:
    resume = paths["resume.h5"]
    print(f"resume of an interrupted {rows}-image split (half committed)")
    (floor, _, _), (res, rsss, ro) = median_runs(rr, (LISTING_FLOOR, [resume, rows]), (RESUME, [resume, rows]))
    ((seq_r, _, _),) = median_runs(1, (SEQ, [resume, "pooled/train"]))
    t.row(
        "resume decision (checks+compact+prepare)",
        res,
        "seq read",
        seq_r,
        None,
        "the compaction (a full copy)",
        rsss,
        max_s=10,
        note=f"  [checks {ro['checks']:.2f}, compact {ro['compact']:.2f}, prepare {ro['prepare']:.2f} s; the decision's "
        f"peak {ro['rss_decision']:.0f} MB, imports and the listing alone {ro['rss_listing']:.0f} MB; the process then "
        "makes a second listing to time its digest]",
    )
    t.row("listing digest", ro["digest"], "numpy compare", floor, None, "a Python loop per row", max_s=2)
    t.row(
        "changed-listing diff (1 changed)",
        ro["diff"],
        "numpy compare",
        floor,
        None,
        "a Python loop per row",
        max_s=2,
        note=f"  (reading the stored listing: {ro['read_listing']:.2f} s)",
    )
    (walk, _, wo), (disc, drss, do) = median_runs(rr, (WALK, [paths["files"]]), (DISCOVER, [paths["files"]]))
    t.row(f"discover ({do['n']} real files)", disc, "scandir+stat", walk, 2.0, "per-file work in Python", drss)


def fit_figures(t: Table, args, skip: set, folder: Path, pooled: Path, maps: Path) -> None:
    budget = args.budget or f"{max(16, 512 * args.rows // 1_000_000)}MB"  # the split stays larger than the budget
    print(
        f"fits out of core (--memory-budget {budget} --jobs {args.jobs}; limit: one sequential read of train; "
        "time per epoch)"
    )
    runs_tmp = Path(tempfile.mkdtemp(prefix="million-runs-", dir=folder))  # removed after the fits (GBs at 10⁶)
    fits = [("pooled", pooled, "pooled/train", c) for c in ("logreg", "sgd", "dense")]
    fits += [("maps", maps, "maps/train", c) for c in ("logreg", "sgd", "dense")]
    for store_name, store, ds, clf in fits:
        if (store_name == "maps" and "maps-fit" in skip) or (clf == "dense" and "dense" in skip) or "fits" in skip:
            t.not_built(f"fit {clf} on {store_name}", "skipped (--skip)")
            continue
        ((s, _, _),) = median_runs(1, (SEQ, [store, ds]))
        base_rss, _ = peak_rss(BASE, str(store), clf)
        runs = runs_tmp / f"{store_name}-{clf}"
        rss, out = peak_rss(FIT, str(store), clf, str(args.epochs), budget, str(runs), str(args.jobs))
        if "refused" in out:
            t.not_built(f"fit {clf} on {store_name}", "refused over the budget: " + out["refused"][:140])
            continue
        # the fit's time over its epochs; sgd's also holds the scaler's one pass (a read and a mean: small beside an
        # epoch of 1,000 binary SGD fits; it was counted as a whole epoch before, which halved sgd's figure)
        per_epoch = out["fit_seconds"] / args.epochs
        t.row(
            f"fit {clf} on {store_name} (per epoch)",
            per_epoch,
            "seq read",
            s,
            1.5,
            "SGD one-vs-rest over 1,000 classes (compute)"
            if clf == "sgd"
            else "Keras steps of 20 rows (the head's default batch_size): per-step overhead",
            rss,
            note=f"  (+{rss - base_rss:.0f} MB over imports; streamed={out['streamed']}; val acc {out['acc']:.3f}; "
            f"whole command {out['seconds']:.0f} s with its evaluation)",
        )
        shutil.rmtree(runs, ignore_errors=True)
        from featstore.units import parse_bytes

        if rss - base_rss > parse_bytes(budget) / 1e6:
            t.missed.append(
                f"fit {clf} on {store_name}: peak RSS {rss - base_rss:.0f} MB over imports > budget {budget}"
            )
    shutil.rmtree(runs_tmp, ignore_errors=True)


def leaks_figures(t: Table, pooled: Path, n_query: int, n_train: int) -> None:
    ((g, _, go),) = median_runs(1, (GEMM, [4096, 65536, 512]))
    rss, lo = peak_rss(LEAKS, str(pooled))
    flops = 2 * (n_query + min(2000, n_train)) * n_train * 512  # queries + the calibration's sample vs train
    t.row(
        "leaks (exact, blocked)",
        lo["seconds"],
        "numpy gemm",
        flops / (go["gflops"] * 1e9),
        2.0,
        "float16->float32 conversion and normalising every train block per query block",
        rss,
        note=f"  (gemm {go['gflops']:.0f} GFLOP/s)",
    )


def export_figures(t: Table, folder: Path, pooled: Path) -> None:
    print(
        "export (pooled test split to Parquet; limits: a sequential read of it, and pyarrow writing the same rows "
        "from memory: float32 conversion and Parquet encoding alone)"
    )
    out_pq = folder / "test.parquet"
    ((s, _, _),) = median_runs(1, (SEQ, [pooled, "pooled/test"]))
    ((floor, _, _),) = median_runs(1, (PARQUET_FLOOR, [pooled, "pooled/test", folder / "floor.parquet"]))
    (folder / "floor.parquet").unlink()
    rss, eo = peak_rss(EXPORT, str(pooled), "test", str(out_pq))
    t.row(
        f"export --out test.parquet ({eo['rows']} rows)",
        eo["seconds"],
        "seq read",
        s,
        None,
        rss=rss,
        note=f"  ({out_pq.stat().st_size / 1e6:.0f} MB)",
    )
    t.row(
        "  the same, against pyarrow alone",
        eo["seconds"],
        "pq write",
        floor,
        1.5,
        "imports, reading the paths, the class and path_bytes columns",
    )
    rss, bo = peak_rss(READ_BACK, str(out_pq))
    t.row(
        "read back: pyarrow read_table",
        bo["seconds"],
        "seq read",
        s,
        None,
        rss=rss,
        note=f"  (to pandas + np.stack: {bo['pandas']:.2f} s)",
    )
    import inspect

    from featstore.store.export import export

    if "rows_per_file" not in inspect.signature(export).parameters:
        t.not_built("export --rows-per-file (Parquet shards)", "no option yet")
    out_pq.unlink()


if __name__ == "__main__":
    main()

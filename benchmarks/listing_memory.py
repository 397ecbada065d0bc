"""Memory and time of the changed-listing check of a started split (issue 21), old code against new, side by side.

Builds in a temporary folder a store whose ``pooled/train`` split was started from a listing of --rows images
(``benchmarks/million_build.fake_listing``: the files need not exist; nothing committed: the check does not read
features), then, in fresh processes taking turns, asks ``SplitWriter.prepare`` to resume it with a listing that
changed (one file another size, paths in the same order; or two files replaced and the order reversed) and times the
refusal (the second call in the process: the first loads what a process loads once). The peak RSS is taken over
that call alone (``/proc/self/clear_refs`` resets the high-water mark as it starts, ``VmHWM`` is read as it ends), so
the listing built by the script (what ``discover`` would hold) is not counted. ``--code`` runs another checkout's
featstore (main, for the figures before).

    python benchmarks/listing_memory.py --rows 100000 --code /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = """import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from million_build import fake_listing, resume_attrs, POOLED
from featstore.store.writer import SplitWriter, StoreFile, synthetic_attrs
lst = fake_listing(Path("/nonexistent"), int(sys.argv[2]))
SplitWriter(StoreFile(Path(sys.argv[1])), ["pooled"], "train").prepare(
    [synthetic_attrs(POOLED, "float16")], resume_attrs(lst, 4096), False, lst)
"""
CHILD = """import ctypes, gc, json, sys, time
sys.path.insert(0, sys.argv[4])
from million_build import fake_listing, resume_attrs, POOLED
from featstore.errors import StoreError
from featstore.images.listing import ImageListing
from featstore.store.writer import SplitWriter, StoreFile, synthetic_attrs
from pathlib import Path
path, n, case = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
first = fake_listing(Path("/nonexistent"), n)
attrs = resume_attrs(first, 4096)  # the digest recorded when the split was started
if case == "changed":
    lst = ImageListing(first.root, "train", first.class_names, first.items, 0, [], list(first.sizes), first.mtimes_ns)
    lst.sizes[n // 2] += 1
else:
    items = first.items[::-1]
    items[0] = ("train/c000/new.jpg", 0)
    items[-1] = ("train/c000/new2.jpg", 0)
    lst = ImageListing(first.root, "train", first.class_names, items, 0, [], first.sizes[::-1], first.mtimes_ns[::-1])
lst.digest()
def call():
    try:
        SplitWriter(StoreFile(path), ["pooled"], "train").prepare([synthetic_attrs(POOLED, "float16")], attrs, False, lst)
        return "not refused"
    except StoreError as exc:
        return str(exc)[-160:]
call()  # once before, so that lazy imports and HDF5's own caches are not counted as the check's
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # memory freed before the call is not counted as the call's
status = lambda key: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key))) / 1024
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
start, t = status("VmRSS"), time.perf_counter()
said = call()
import featstore; print(json.dumps({"code": featstore.__file__, "seconds": time.perf_counter() - t, "peak_over_start": status("VmHWM") - start, "said": said}))
"""


def run(code: Path, path: Path, rows: int, case: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(rows), case, str(HERE)],
        env=env,
        capture_output=True,
        text=True,
        cwd=path.parent,
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--code", default=None, help="another checkout to run beside this one (e.g. /work/main)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    codes = {"this": HERE.parent, **({"other": Path(args.code)} if args.code else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "started.h5"
        subprocess.run(
            [sys.executable, "-c", BUILD, str(path), str(args.rows), str(HERE)],
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
            check=True,
            cwd=tmp,
        )
        for case in ("changed", "reordered"):
            got = {name: [] for name in codes}
            for _ in range(args.repeats):
                for name, code in codes.items():  # taking turns
                    got[name].append(run(code, path, args.rows, case))
            for name, runs in got.items():
                sec = statistics.median(r["seconds"] for r in runs)
                peak = statistics.median(r["peak_over_start"] for r in runs)
                print(f"{case:9s} {name:5s} ({codes[name]}): {sec:.2f} s, peak RSS over the start {peak:.0f} MB")
                print(f"          {runs[0]['code']} said: ...{runs[0]['said'][-90:]}")


if __name__ == "__main__":
    main()

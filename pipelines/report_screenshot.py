"""The screenshot of a run's page in docs/report.md: the quick start's report, opened in headless Chromium.

Run it in the folder where the quick start ran (its features.h5 and runs); it writes the report (into a temporary
folder unless --site), opens the page of the run whose id starts with --run, and saves what a 1200 px wide browser
window shows from the top of the page (the run, its metrics and its test confusion matrix):

    python pipelines/report_screenshot.py --run logreg --out docs/img/report-run.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from featstore import build_report
from featstore.outputs import write_atomic
from featstore.report.site.browser import blank, chromium, missing, visit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("features.h5"))
    ap.add_argument("--run", default="logreg", help="id (or prefix) of the run whose page is shown")
    ap.add_argument("--site", type=Path, default=None, help="write the report here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=Path("docs/img/report-run.png"))
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=1260)
    args = ap.parse_args()
    if missing():
        raise SystemExit(f"cannot take the screenshot: {missing()}")
    site = args.site or Path(tempfile.mkdtemp(prefix="featstore-report-")) / "site"
    index = build_report(args.store, out=site).index
    pages = sorted((index.parent / "runs").glob(f"{args.run}*.html"))
    if not pages:
        raise SystemExit(f"no run page starting with {args.run!r} in {index.parent / 'runs'}")
    with chromium(args.width, args.height) as driver:
        problems = visit(driver, pages[0])
        if problems:
            raise SystemExit("the page did not load cleanly: " + "; ".join(problems))
        png = driver.get_screenshot_as_png()
    if blank(png):
        raise SystemExit("the screenshot is blank")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, lambda tmp: tmp.write_bytes(png), "--out")
    print(f"wrote {args.out} from {pages[0]}")


if __name__ == "__main__":
    main()

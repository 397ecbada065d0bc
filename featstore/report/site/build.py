"""``featstore report``: the static site of a store and its runs, written into one folder that opens from disk.

Layout of the folder (``--out``, default ``<store stem>.report/`` beside the store; ``<store>.report/`` for a store
whose own name ends in ``.report``, so that the default is never the store itself)::

    index.html                 the store (provenance, splits, counts, failures, leaks) and every run, sortable
    runs/<id>.html             a run: metrics, per-class figures, the confusion grid, curves, members
    galleries/<id>/<split>-<true>-<predicted>.html, <split>-mistakes.html
    maps/<extractor>.html      the embedding map
    leaks.html                 near-duplicate pairs side by side
    assets/                    site.css, site.js, plotly.min.js, placeholder.svg
    thumbs/<key>.png           the thumbnails the pages show (copied from the cache beside the store)
    .featstore-report.json     the files this report wrote (the next report removes those it no longer writes)

A folder that holds files but no ``.featstore-report.json`` is refused (it is not a report: nothing there is
overwritten). Caches beside the store (``<store>.cache/``): thumbnails, map layouts, leak pairs. The folder is opened
once and every file is written into it, and removed from it, through descriptors
(:class:`~featstore.report.site.sitefolder.SiteFolder`): a link swapped in at ``--out`` or a subfolder meanwhile is
never followed (attack 28 #2).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shlex
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from featstore.caches import CacheNotMade, cache_folder
from featstore.errors import ConfigError, FeatstoreError, NotWritten, OutputError, check_jobs, check_paths, check_seed
from featstore.experiments.projection import DEFAULT_MAX_ROWS, choose_method, project
from featstore.models.scratch import new_scratch
from featstore.outputs import cache_dir, check_output, output_fix, refuse_run_files, resolved, terminal_safe  # noqa: F401
from featstore.report.site import charts, journal
from featstore.report.site.changed_pics import changed_sources
from featstore.report.site.mapview import map_view
from featstore.report.site.render import figure_json, original, page, write_assets
from featstore.report.site.runpages import run_view
from featstore.report.site.sitefolder import SiteFolder
from featstore.report.site.storeruns import mark_selected, runs_of_store
from featstore.report.site.storeview import LeakView, leak_view, overview
from featstore.report.site.thumbs import ThumbCache
from featstore.runs.fittedrows import RowsPlace
from featstore.runs.folder import runs_root, scan_runs_of
from featstore.sticky import unlisted
from featstore.store.folders import refuse_in_image_folders
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)

MANIFEST = ".featstore-report.json"
MANIFEST_MAX_BYTES = 64 << 20  # the files of an earlier report; far more than any report lists
PLACEHOLDER = "assets/placeholder.svg"
DEFAULT_GALLERY = 60  # images per confusion cell (mistakes pages: four times as many)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote."""

    index: Path  # the site's index.html
    pages: int  # HTML pages written
    thumbs_made: int  # thumbnails decoded this time
    thumbs_reused: int  # thumbnails found in the cache
    maps: list[str] = field(default_factory=list)  # one line per map: method, sample, seconds (cached or not)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    seconds: float = 0.0


def default_out(store: str | os.PathLike) -> Path:
    """``features.h5`` -> ``features.report/`` (beside ``features.runs/``); never the store itself: a store named
    ``s.report`` gets ``s.report.report/`` (its own name was refused as "--out s.report is not a folder", an option
    the user had not given: attack 53 #6).

    >>> default_out("features.h5"), default_out("s.report")
    (PosixPath('features.report'), PosixPath('s.report.report'))
    """
    out = Path(store).with_suffix(".report")
    return Path(f"{store}.report") if out == Path(store) else out


def _as_default(exc: FeatstoreError, out: Path) -> FeatstoreError:
    """A refusal of the report folder the user did not name: "--out X ..." says "the report's default folder X ..."
    and "give --out DIR"; any other line as it is."""
    line = str(exc)
    for head in (f"--out {terminal_safe(str(out))}", f"--out {out}"):
        if line.startswith(head):
            rest, fix = line[len(head) :].rstrip("."), "give a new or empty folder"
            rest = (
                rest.replace(fix, "give --out DIR, a new or empty folder") if fix in rest else rest + "; give --out DIR"
            )
            text = f"the report's default folder {terminal_safe(str(out))}{rest}"
            try:
                return type(exc)(text)
            except TypeError:  # an error class with other arguments: its own line
                return exc
    return exc


def _prepare(out: Path) -> tuple[SiteFolder, set[str]]:
    """Open the output folder (new, empty, or an earlier report) once; the files the earlier report wrote."""
    if out.is_symlink():
        raise OutputError(f"--out {out} is a symbolic link; featstore never writes through a link")
    if not out.exists():
        check_output(out, "--out")  # its parent must exist
    site = SiteFolder(out, lambda exc, where: _not_writable(out, exc, where))
    try:
        journal.lock(site)  # a second report into the folder while one writes it: one line (attack 54 #4)
        if site.made:
            return site, set()
        try:  # the site's first file, tried before any work (an empty folder on a read-only file system)
            site.probe()
        except OSError as exc:
            raise _not_writable(out, exc, out) from None
        st = site.lstat(MANIFEST)
        if st is None or not stat.S_ISREG(st.st_mode):
            if not site.is_empty():
                raise ConfigError(
                    f"--out {out} holds files that featstore report did not write; give a new or empty folder "
                    f"(a report folder keeps a {MANIFEST})"
                )
            return site, set()
        site.check_levels(SITE_FOLDERS)  # each level it may write into, before the manifest is rewritten
        raw = site.read_small(MANIFEST, MANIFEST_MAX_BYTES)  # None: a planted one over 64 MiB, read nor cleaned
        try:
            listed = json.loads(raw.decode("utf-8"))["files"]
            return site, {f for f in listed if isinstance(f, str)} | journal.left_behind(site)
        except (AttributeError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: a nested [[[[...
            return site, journal.left_behind(site)  # a killed report's pages: cleaned too (attack 54 #4)
    except BaseException:
        site.close()
        raise


def _stopped(exc: OutputError, site: SiteFolder) -> OutputError:
    """A write that failed half-way through the site (a full disk), said with what is left: its "Nothing was written
    there" is of that one file (:class:`~featstore.errors.NotWritten`), and the folder kept the files written before
    it, while the line read as if the report had written nothing (attack 48 L2)."""
    if not isinstance(exc, NotWritten):
        return exc
    out = terminal_safe(str(site.out))
    if not site.wrote:  # its first file (the manifest) failed: the folder is as it was (attack 55 #6)
        left = "the folder it had made was removed" if site.remove_if_made() else f"{out} is as it was before"
        return OutputError(f"{str(exc).rstrip().rstrip('.')}; the report stopped at its first file: {left}")
    line = f"{exc.why}. That file was not written{exc.then}".rstrip()
    left = f"{out} holds the files written before it ({MANIFEST} marks the report unfinished)"
    if site.made:
        left += f"; run the report again once that is fixed, or remove the folder this report made: rm -r {shlex.quote(out)}"
    else:
        left += ", beside the earlier report's; run the report again once that is fixed"
    return OutputError(f"{line}{'' if line.endswith('.') else '.'} The report stopped there: {left}")


def _not_writable(out: Path, exc: OSError, where: Path) -> OutputError:
    """One line for a report folder that cannot be made or written (``where``: the folder that refused)."""
    if isinstance(exc, PermissionError) and unlisted(where):  # its fix is the line's: cut, it said "not writable"
        return OutputError(
            f"cannot write the report into {terminal_safe(str(out))}: {unlisted(where)}; nothing was written"
        )
    why = output_fix(exc, where / "x").split(";")[0]
    return OutputError(
        f"cannot write the report into {terminal_safe(str(out))}: {terminal_safe(why)}. Give --out DIR in a folder you "
        f"can write (e.g. --out ~/{terminal_safe(out.name or 'report')}); nothing was written"
    )


SITE_FOLDERS = ("runs", "galleries", "maps", "assets", "thumbs")  # where a report writes (see the layout above)
SITE_TOP = ("index.html", "leaks.html")
SITE_SUFFIXES = (".html", ".png", ".svg", ".css", ".js", ".json")


def _site_file(rel: str) -> bool:
    """Whether ``rel`` (relative to the site) is a name the report's own layout can hold: only those are cleaned."""
    parts = Path(rel).parts
    if not parts or ".." in parts or Path(rel).is_absolute():
        return False
    if len(parts) == 1:
        return rel in SITE_TOP
    return parts[0] in SITE_FOLDERS and Path(rel).suffix in SITE_SUFFIXES


def _clean(site: SiteFolder, old: set[str], new: set[str], keep: tuple[Path, ...]) -> None:
    """Remove the files an earlier report wrote that this one did not: regular files inside the folder the report
    opened (through its descriptors: a link put at ``--out`` or a subfolder is never followed) whose names its layout
    can hold (a manifest planted in a project folder listed ``notes.txt``, the store of `report --out .` and a run's
    files, and all were deleted); never an HDF5 file nor anything under ``keep``."""
    kept = set()
    for k in keep:
        try:
            st = os.stat(k)
            kept.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    if site.inside(kept):  # the site inside the runs or cache folder: nothing there is the report's to remove
        return
    for rel in sorted(old - new):
        if _site_file(rel):
            site.remove("/".join(Path(rel).parts), kept)


def build_report(
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    map_rows: int = DEFAULT_MAX_ROWS,
    map_method: str = "auto",
    gallery: int = DEFAULT_GALLERY,
    leaks: bool = True,
    seed: int = 0,
    jobs: int = 1,
) -> ReportResult:
    """Write the report site of a store and its runs; returns where its index is and what it did.

    ``map_rows``: rows sampled for each extractor's map; ``gallery``: images shown per confusion cell; ``leaks``:
    show the last leak check's pairs (found again once, then cached). Example::

        result = build_report("features.h5")
        print(result.index)        # features.report/index.html
    """
    check_paths(out=out)  # '' wrote the whole site into the current folder, '\t' into a folder named with a tab
    start = time.monotonic()
    if isinstance(gallery, bool) or not isinstance(gallery, int) or gallery < 1:
        raise ConfigError(f"gallery must be a number of images of at least 1, not {gallery!r}")
    if isinstance(map_rows, bool) or not isinstance(map_rows, int) or map_rows < 2:
        raise ConfigError(f"map_rows must be a number of rows of at least 2, not {map_rows!r}")
    check_seed(seed)  # a negative or 33-bit seed reached scikit-learn's PCA as a traceback
    check_jobs(jobs)  # 0 or a negative count was taken without a word
    map_method = choose_method(map_method)  # an unknown name is refused before any work
    fs = FeatureStore(store)
    given = out is not None
    out = Path(out) if given else default_out(store)
    try:
        site, old = _open_out(store, runs, out)
    except FeatstoreError as exc:
        raise (exc if given else _as_default(exc, out)) from None
    with site:
        try:  # made after the folder was accepted: a refused one left <store>.report.cache behind (attack 53 #6)
            cache, not_kept = _caches(store)  # a link there (or at thumbs/, maps/) is refused before any work
        except BaseException:
            site.remove_if_made()  # the report folder made for it, still empty
            raise
        try:
            result = _write_site(
                site, old, fs, store, runs, cache, not_kept, map_rows, map_method, gallery, leaks, seed, jobs
            )
        except OutputError as exc:
            raise _stopped(exc, site) from None
    result.seconds = time.monotonic() - start
    if not_kept:
        shutil.rmtree(cache, ignore_errors=True)
    return result


def _open_out(store, runs, out: Path) -> tuple[SiteFolder, set[str]]:
    """The report folder checked (never a runs folder, a run's, an image folder's) and opened (:func:`_prepare`)."""
    resolved(out, "--out")  # a symbolic link loop: one line, not "RuntimeError: Symlink loop"
    runs_folder = runs_root(store, runs).resolve()
    if out.resolve() == runs_folder or out.resolve().is_relative_to(runs_folder):
        raise ConfigError(
            f"--out {terminal_safe(str(out))} is inside the runs folder {terminal_safe(str(runs_folder))}, where "
            f"every folder is a run; give a folder outside it (default: {terminal_safe(str(default_out(store)))})"
        )
    if not out.exists():
        refuse_run_files(out, "--out", folder=True)  # nor another store's runs folder, nor a run's folder
    refuse_in_image_folders(out / "index.html", store, "--out")  # its thumbnails would be extracted as images
    return _prepare(out)  # --out opened once: every file below is written and removed through it


def _write_site(site, old, fs, store, runs, cache, not_kept, map_rows, map_method, gallery, leaks, seed, jobs):
    """The pages, assets, maps and thumbnails of :func:`build_report`, written into the folder ``site`` holds open."""
    out = site.out
    site.write_text(MANIFEST, json.dumps({"files": sorted(old), "complete": False}), "report manifest")  # a stop: known
    written_ahead = journal.Journal(site)  # each file named before it is written, until the complete manifest
    thumbs = ThumbCache(cache / "thumbs")
    result = ReportResult(out / "index.html", 0, 0, 0, notes=[not_kept] if not_kept else [])
    store_info = overview(fs)
    listing = scan_runs_of(store, runs)
    records, runs_notes = runs_of_store(listing.records, store, fs)  # other stores' runs left out (#4; 65 #8)
    result.notes += [f"run folder {n} is broken and not shown: {why}" for n, why in listing.broken] + runs_notes
    result.notes += [f"run folder {n} is not shown: {why}" for n, why in listing.unreadable]
    paths, pages = _Paths(fs), {r.id: f"runs/{r.id}.html" for r in records}
    place = RowsPlace(fs, runs_root(store, runs))  # marks on this store's rows, an ensemble's members' (74 #1, #3)
    views = [run_view(r, place.root / r.id, paths.of, gallery, pages, place=place) for r in records]
    mark_selected(views, runs_root(store, runs))  # where each run chose: its figures there are optimistic (63 #5)
    maps = []
    for name in fs.extractors(caches=False):
        try:
            proj = project(fs, name, max_rows=map_rows, method=map_method, seed=seed, cache=cache / "maps", jobs=jobs)
        except FeatstoreError as exc:
            result.notes.append(f"no map of {name}: {exc}")
            continue
        classes = fs.class_names(name)
        maps.append(map_view(proj, classes, paths.of, paths.labels, views))
        took = "cached" if proj.cached else f"{proj.seconds:.1f} s"
        result.maps.append(f"{name}: {proj.describe()} ({took})")
    lines = {e["name"]: e["leaks"] for e in store_info["extractors"]}
    leak_views = [
        leak_view(fs, n, cache, lines[n]) if leaks else LeakView(n, lines[n], note="not shown (--no-leaks)")
        for n in fs.extractors(caches=False)
    ]
    written = _thumbnails(site, thumbs, views, maps, leak_views, changed := changed_sources(fs, views, maps))
    for first, why in list(changed.items())[:1]:  # said, not only on the pages (attack 64 #10)
        result.notes.append(f"{len(changed):,} pictured image(s) not shown; the first, {terminal_safe(first)}: {why}")
    result.thumbs_made, result.thumbs_reused = thumbs.made, thumbs.reused
    if missing := thumbs.missing():  # said, not only on the pages: every image refused read as "0 made" (attack 31)
        first = missing[0]
        result.notes.append(
            f"{len(missing):,} image(s) shown without a thumbnail; the first, {terminal_safe(first.source)}: "
            f"{terminal_safe(first.reason)}"
        )
    written |= set(write_assets(site))
    common = {"store": store_info, "maps": maps, "generated": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    common["runs_notes"] = runs_notes  # other stores' runs left out, or several stores' runs shown (attack 63 #4)
    index = page("index.html.j2", root="", runs=views, broken=listing.broken, compare=_compare(views), **common)
    pages_written = [site.write_text("index.html", index, "report page")]
    for v in views:
        text = page("run.html.j2", root="../", run=v, **common)
        pages_written.append(site.write_text(f"runs/{v.rec.id}.html", text, "report page"))
        for g in v.galleries:
            text = page("gallery.html.j2", root="../../", g=g, run=v, **common)
            pages_written.append(site.write_text(f"galleries/{v.rec.id}/{Path(g.page).name}", text, "report page"))
        site.release("galleries", v.rec.id)  # one descriptor per run's folder: never thousands held at once
    for m in maps:
        written.add(_sample_file(m, site))
        text = page("map.html.j2", root="../", m=m, **common)
        pages_written.append(site.write_text(f"maps/{Path(m.page).name}", text, "report page"))
    text = page("leaks.html.j2", root="", leaks=leak_views, **common)
    pages_written.append(site.write_text("leaks.html", text, "report page"))
    written |= set(pages_written)
    _clean(site, old, written, (Path(store).resolve(), runs_root(store, runs).resolve(), cache.resolve()))
    site.write_text(MANIFEST, json.dumps({"files": sorted(written), "complete": True}, indent=0), "report manifest")
    written_ahead.finish()
    if not site.still_named():
        result.notes.append(
            f"--out {terminal_safe(str(out))} was renamed away or replaced while the report was written (someone else "
            f"can write {terminal_safe(str(out.parent))}); the report went on into the folder it opened, wherever that "
            f"is now, and nothing was written through what is at that name now"
        )
    result.pages = len(pages_written)
    return result


def _caches(store) -> tuple[Path, str]:
    """``<store>.cache`` with its ``thumbs/`` and ``maps/`` (a link or file in the way: OutputError), and ""; where no
    folder can be made there (a store in a folder the user cannot write: the cache's place follows the store, no option
    moves it; or another user's cache folder closed to this user), a temporary folder for this report (removed after
    it, or at exit) and a note saying so."""
    try:
        cache = cache_folder(cache_dir(store))
        for sub in ("thumbs", "maps"):
            cache_folder(cache, sub)
        return cache, ""
    except CacheNotMade as exc:  # (a colleague's cache closed to this user: CacheNotTrusted, attack 34 #4b)
        tmp = new_scratch("report")  # a SIGKILL's leftover is removed by the next report (its process gone)
        atexit.register(shutil.rmtree, tmp, True)
        for sub in ("thumbs", "maps"):
            (tmp / sub).mkdir(mode=0o700)  # private, as mkdtemp's folder: a cache no one else can write into
        return (
            tmp,
            f"the report's caches are not kept beside the store ({exc}); thumbnails and maps are made again each time",
        )


def _compare(views) -> object:
    """The runs' accuracy chart (validation and test, intervals where recorded), or None without runs."""
    if not views:
        return None
    splits = [s for s in ("validation", "test") if any(v.accuracy(s)[0] is not None for v in views)]
    scores = {s: [v.accuracy(s)[0] for v in views] for s in splits}
    intervals = {s: [v.accuracy(s)[1] for v in views] for s in splits}
    return figure_json(charts.compare_figure([v.rec.id for v in views], scores, intervals))


def _sample_file(m, site: SiteFolder) -> str:
    """The map's sample, recorded beside its page: extractor, fingerprint, method, settings, seed, rows per split."""
    p = m.projection
    record = {
        "extractor": p.extractor,
        "fingerprint": p.fingerprint,
        "method": p.method,
        "settings": p.settings,
        "seed": p.seed,
        "rows": p.rows,
        "sample": {s: r.tolist() for s, r in p.sample.items()},
    }
    m.sample_file = f"maps/{Path(m.page).stem}.sample.json"
    return site.write_text(m.sample_file, json.dumps(record), "map sample")


class _Paths:
    """Paths, source roots and labels of the store's splits, each read once."""

    def __init__(self, fs: FeatureStore):
        self.fs = fs
        self._paths: dict = {}
        self._labels: dict = {}

    def of(self, group: str, split: str) -> tuple[list[str], str] | None:
        """``(paths, source_root)`` of a split, or None when the store has no such sound split."""
        if (group, split) not in self._paths:
            try:
                root = str(self.fs.split_info(split, group).get("source_root") or "")
                self._paths[(group, split)] = (self.fs.paths(split, group), root)
            except FeatstoreError:
                self._paths[(group, split)] = None
        return self._paths[(group, split)]

    def labels(self, group: str, split: str):
        if (group, split) not in self._labels:
            self._labels[(group, split)] = self.fs.labels(split, group)
        return self._labels[(group, split)]


def _thumbnails(site: SiteFolder, thumbs: ThumbCache, views, maps, leak_views, changed: dict) -> set[str]:
    """Make (or reuse) every thumbnail the pages show, copy them into ``thumbs/``; set each item's URL and reason. A
    file ``changed`` since its row was extracted gets none, its reason (:mod:`~featstore.report.site.changed_pics`)."""
    items = [i for v in views for g in v.galleries for i in g.items] + [p for m in maps for p in m.points]
    sources = [i.source for i in items]
    for v in leak_views:
        sources += [s for p in v.pairs for s in (p.query_source, p.reference_source)]
    found = thumbs.make([s for s in sources if s not in changed])
    written: set[str] = set()
    with site.named("thumbs") as folder:  # /proc/self/fd/<fd of thumbs/>: a link put at its name is never followed

        def url(source: str) -> tuple[str | None, str]:
            if source in changed:
                return None, changed[source]
            t = found[source]
            name = thumbs.export(t, folder, lambda n: site.announce(f"thumbs/{n}"))  # journaled first
            if name is None:
                return None, t.reason
            written.add(f"thumbs/{name}")
            return f"thumbs/{name}", ""

        for i in items:
            i.thumb, i.reason = url(i.source)
        for v in leak_views:
            for p in v.pairs:
                p.query_thumb, p.query_reason = url(p.query_source)
                p.reference_thumb, p.reference_reason = url(p.reference_source)
    for m in maps:
        m.data = [[p.thumb or PLACEHOLDER, p.path, p.label, p.split, original(p.source), p.reason] for p in m.points]
    return written

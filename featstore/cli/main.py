"""The ``featstore`` command's application object, global options and error handling; the commands are in sibling modules.

Start-up: only ``extract``, ``predict``, ``models --layers`` and Keras-head fits import TensorFlow (the
package imports lazily); its C++ start-up noise is hidden by :mod:`featstore.quiet` unless ``--verbose``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from featstore.cli.denied import denied_line
from featstore.cli.repeated import refuse_repeated
from featstore.errors import ConfigError, FeatstoreError

logger = logging.getLogger(__name__)


class _Group(TyperGroup):
    """A command group that refuses empty option values (:func:`refuse_empty`) before the chosen command runs; the
    ``runs`` group is one too, so `runs show` and `runs evaluate` are checked as well."""

    def parse_args(self, ctx, args):
        got = None if ctx.resilient_parsing else _parse(self, ctx, ctx.info_name, args)  # ctx: its -h
        if got is not None and not got[0].get("help"):  # the group's own options (`--no-locking --locking`: 69 #6)
            refuse_repeated(self, got, ctx.info_name, args)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not ctx.resilient_parsing:
            refuse_empty(command, ctx, name, rest)
        return name, command, rest


class _App(typer.Typer):
    """The application; once a command has ended (its last line printed, its status known) a Ctrl-C cannot make the
    interpreter's shut-down (TensorFlow's threads, 1-2 s) exit 130 or print a traceback: a finished fit read as
    interrupted, and a script's `fit || fit` recorded it twice (attack 64 #5). Only where the process is the
    ``featstore`` command (``sys.argv[0]``: the console script, ``python -m featstore.cli``): a script or notebook that
    calls ``app(...)`` and goes on keeps its Ctrl-C (attack 66 #1); tests invoke the click command."""

    def __call__(self, *args, **kwargs):
        import signal
        import threading

        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:
            argv0 = Path(sys.argv[0] if sys.argv else "")
            command = argv0.name in ("featstore", "featstore.exe") or argv0.as_posix().endswith("cli/__main__.py")
            if command and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise


app = _App(
    cls=_Group,
    help="Extract frozen-CNN features once into HDF5, then experiment on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def safe(text: object) -> str:
    """``text`` for a terminal: each line's control characters, bidi overrides and undecodable bytes escaped
    (:func:`featstore.outputs.terminal_safe`), line breaks kept: for featstore's own multi-line messages. A name from
    a store or a folder (a file, a class) goes through :func:`name` before it is put in a line."""
    from featstore.outputs import terminal_safe

    return "\n".join(terminal_safe(line) for line in str(text).split("\n"))


def name(text: object) -> str:
    r"""One name (a file, a class, a run) as one cell of a line: every control character escaped, ``\n`` and ``\r``
    too (``x.png\nz.png`` printed ``z.png`` as a row of its own: attack 19)."""
    from featstore.outputs import terminal_safe

    return terminal_safe(str(text))


# Options naming a run, a split, a layer, an extractor, a model or a file: an empty value (an unset shell variable:
# --run "$RUN") is refused in one line, never taken as the default, as "cross-validation" or as "any run" (a prefix).
# Keyed by parameter name, or "command parameter" for one command's own. "(or none)" is added where the option's help
# names `none` (in backquotes) as a value: fit's and sweep's --validation/--test take it, probe's and fewshot's refuse
# it (attack 21: the refusal advised it to every command).
_NAMED = {
    "run": "a run id (`featstore runs` lists them)",
    "run_id": "a run id (`featstore runs` lists them)",
    "run_ids": "run ids (`featstore runs` lists them)",
    "split": "a split name",
    "train": "a split name",
    "validation": "a split name",
    "test": "a split name",
    "layer": "a layer name (`featstore models NAME --layers`)",
    "unfreeze_from": "a layer name (`featstore models NAME --layers`)",
    "name": "a name",
    "extractor": "an extractor name (`featstore info` lists them)",
    "model": "a model name or file (`featstore models`)",
    "clf": "a classifier (`featstore classifiers`)",
    "weights": "a weights name or file",
    "runtime": "keras or onnx",
    "models name": "a model name or file (`featstore models` lists them)",
    "query": "a stored image or an image file",
}


def refuse_empty(command, ctx, name: str, args: list[str]) -> None:
    """Exit 1 naming the first option or argument of ``command`` given an empty (or all-space) value in ``args``: those
    of :data:`_NAMED` say what they want, path options say "give a path", any other argument "give a value" (an empty
    one is never meant: `predict "$IMAGES"` with IMAGES unset predicted every image under the current folder). The
    words are split by the command's own parser, so ``--opt ''``, ``--opt=``, a value after ``--`` and the value of
    another option (``--name --out``) are each taken for what click takes them; a parse error is left to click, and
    a --help (the command's, or for a group its sub-command's) shows the help. Typer turns ``--runs ""`` into
    ``Path('.')`` before the command sees it: `fit --runs "$RUNS"` with RUNS unset recorded the run into the current
    folder (attack 20)."""
    got = _parse(command, ctx, name, args)
    if got is None or _asks_help(command, got):
        return
    parsed = got[0]
    refuse_repeated(command, got, name, args)
    for param in command.params:
        value = parsed.get(param.name)
        given = value if isinstance(value, (list, tuple)) else [value]
        if not any(isinstance(v, str) and not v.strip() for v in given):
            continue
        argument = param.param_type_name == "argument"
        annotation = getattr(param.type_descriptor, "annotation", None)
        what = _NAMED.get(f"{command.name} {param.name}") or _NAMED.get(param.name)
        what = what or ("a path" if _is_path(annotation) else "a value" if argument else None)
        if what is None:
            continue
        if "`none`" in (getattr(param, "help", None) or ""):
            what += " (or none)"
        opt = next((o for o in param.opts if o.startswith("--")), None) or (param.metavar or param.name).upper()
        empty = "has an empty value" if isinstance(value, (list, tuple)) else "is empty"
        default = "" if param.required else ", or leave it out for its default"
        typer.secho(
            f"error: {opt} {empty} (an unset shell variable?); give {what}{default}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1)


def comma_list(text: str, option: str) -> list[str]:
    """The items of a comma-separated option value, each stripped: every comma-list option (extract's --layer and
    --augment-spec, sweep's --clf and --extractor, probe's --extractor and --k, fewshot's --shots, finetune's
    --augment) is split here, so an empty item (``vgg16,``, ``,vgg16``, ``a,,b``: a stray comma, or an unset variable
    in ``"$A,$B"``) or a repeated one (``vgg16,vgg16``) is refused in one line naming the option, never dropped by one option and sent on by the next
    (attack 22). A value that is empty as a whole is refused as an unset variable (:func:`refuse_empty` says so
    first for the options of :data:`_NAMED`).

    >>> comma_list("block3_pool, block4_pool", "--layer")
    ['block3_pool', 'block4_pool']
    >>> comma_list("vgg16,", "--extractor")
    Traceback (most recent call last):
    featstore.errors.ConfigError: --extractor 'vgg16,' has an empty item; remove the extra comma
    >>> comma_list("vgg16,vgg16", "--extractor")
    Traceback (most recent call last):
    featstore.errors.ConfigError: --extractor 'vgg16,vgg16' lists 'vgg16' twice; give each value once
    """
    if not text.strip():
        raise ConfigError(f"{option} is empty (an unset shell variable?); give one or more values, comma-separated")
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"{option} {text!r} has an empty item; remove the extra comma")
    seen: set[str] = set()
    for item in items:  # sweep fitted and recorded each cell twice; extract refused (attack 24)
        if item in seen:
            raise ConfigError(f"{option} {text!r} lists {item!r} twice; give each value once")
        seen.add(item)
    return items


def _parse(command, ctx, name: str, args: list[str]):
    """(values, words left over, context) of ``args`` split by ``command``'s own parser; None on a parse error (click's
    UsageError: click reports it when it parses the words itself)."""
    sub = command.context_class(command, parent=ctx, info_name=name)
    try:
        parsed, rest, order = command.make_parser(sub).parse_args(args=list(args))
    except typer.TyperException:
        return None
    return parsed, rest, sub, order


def _asks_help(command, got) -> bool:
    """Whether parsed words ask for a help: ``command``'s --help, or for a group the --help of the sub-command its left
    words name (`runs --store '' show --help` shows show's help, as every other --help does)."""
    parsed, rest, ctx, _ = got
    if parsed.get("help"):
        return True
    inner = command.get_command(ctx, rest[0]) if rest and hasattr(command, "get_command") else None
    inner_got = _parse(inner, ctx, rest[0], rest[1:]) if inner is not None else None
    return inner_got is not None and _asks_help(inner, inner_got)


def _is_path(annotation) -> bool:
    """Whether a parameter's annotation is a path (``Path``, ``Optional[Path]``, ``list[Path]``)."""
    import typing

    if isinstance(annotation, type):
        return issubclass(annotation, os.PathLike)
    return any(_is_path(a) for a in typing.get_args(annotation))


def echo(text: object = "", err: bool = False) -> None:
    """``typer.echo`` of :func:`safe` text."""
    typer.echo(safe(text), err=err)


def _errors(fn):
    """Print a FeatstoreError's message (it names the fix) and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FeatstoreError as exc:
            typer.secho(f"error: {safe(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        except (KeyboardInterrupt, ImportError) as exc:  # Ctrl-C before a command's own line (its imports, opening)
            if not _by_ctrl_c(exc):
                raise
            typer.secho("interrupted (Ctrl-C); re-run the same command to do it", err=True)
            raise typer.Exit(130) from None
        except PermissionError as exc:  # a path this user may not reach, met before featstore's own checks could say
            if exc.filename is None or _raised_in_h5py(exc):
                raise
            typer.secho(f"error: {safe(denied_line(exc))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        except (RuntimeError, KeyError, OSError, ValueError, SystemError) as exc:
            if not _raised_in_h5py(exc):
                raise
            first = (str(exc).splitlines() or [""])[0][:200]
            if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc):  # HDF5 writing: a full disk
                typer.secho(
                    f"error: the disk filled while HDF5 wrote ({safe(first)}): free some space, then re-run the same "
                    f"command, without --overwrite (an extract then resumes from its last committed batch)",
                    fg=typer.colors.RED,
                    err=True,
                )
                raise typer.Exit(1) from None
            store = kwargs.get("store")
            what = (
                f"the store {safe(str(store))} (or another file this command opened)"
                if store
                else "a file this command opened"
            )
            typer.secho(
                f"error: HDF5 could not read {what} ({type(exc).__name__}: {safe(first)}): its "
                f"metadata is damaged (a flipped bit, a truncated copy) or it was not written by featstore. Restore it "
                f"from a copy, or re-extract into a new --store",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def _by_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, or an import it broke (a KeyboardInterrupt inside an extension module's start-up is
    "ImportError: initialization failed", a traceback; Typer ended a bare Ctrl-C with exit 130 and no line)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _raised_in_h5py(exc: BaseException) -> bool:
    """Whether ``exc`` came out of h5py itself (its last frame is h5py's): HDF5 meeting damaged metadata (a bad
    checksum, an address past the end) where featstore's own checks did not look first (attack 23: one flipped bit made
    `info` and `check` a 20-line traceback)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return where.startswith("h5py") or f"{os.sep}h5py{os.sep}" in where  # Cython frames: "h5py/_objects.pyx"


class _SafeFormatter(logging.Formatter):
    """Log lines through :func:`safe`: a file name in a message cannot send escape sequences to the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))


def _version(value: bool) -> None:
    """--version: print the version and stop."""
    if value:
        from featstore.version import __version__

        typer.echo(f"featstore {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug details, TensorFlow's start-up lines included.")
    ] = False,
    locking: Annotated[
        Optional[bool],
        typer.Option(
            "--locking/--no-locking",
            help="HDF5 file locking; --no-locking for filesystems without working locks (NFS, Lustre). Default: HDF5's (honours HDF5_USE_FILE_LOCKING).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print featstore's version and exit."),
    ] = False,
) -> None:
    """featstore: transfer learning on cached CNN features."""
    if locking is not None or "featstore.store.locking" in sys.modules:  # h5py and the store: ~0.2 s not paid by
        from featstore.store.locking import set_locking  # the commands that open no store (a --help, classifiers)

        set_locking(locking)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("tensorflow", "absl", "h5py", "PIL", "matplotlib", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from featstore.quiet import set_quiet

    if verbose:
        os.environ["FEATSTORE_VERBOSE"] = "1"  # worker processes (Ray actors) show TensorFlow's lines too
    set_quiet(not verbose)
    _private_tempdir()


def _private_tempdir() -> None:
    """Every temporary file of the command (featstore's, Keras's, TensorFlow's generated code) in a folder where no
    one else may rename entries (:func:`featstore.tmpdir.private_tempdir`; attack 41 #3). Where there is none, nothing
    is said here: the command refuses in one line when it needs one (featstore's scratch folders, or its first import
    of TensorFlow or Keras: :class:`_BeforeKeras`), and one that needs none says nothing (attack 42 #7: every
    command printed the line twice, this warning and then its own error)."""
    import tempfile

    from featstore.tmpdir import own_tempdir, quiet_matplotlib

    sys.meta_path[:] = [  # an earlier in-process run's, and the API's (it checks a part of _BeforeKeras's checks)
        f for f in sys.meta_path if not isinstance(f, _BeforeKeras) and type(f).__name__ != "SettingsCheck"
    ]
    try:
        tempfile.tempdir = own_tempdir()
    except ConfigError:
        sys.meta_path.insert(0, _BeforeKeras(needs_tmp=True))
    else:
        sys.meta_path.insert(0, _BeforeKeras(needs_tmp=False))
        quiet_matplotlib(tempfile.tempdir)


class _BeforeKeras:
    """An import hook (``sys.meta_path``) run at the first import of TensorFlow or Keras. While there is no private
    temporary folder, it refuses: they write generated code there (autograph's modules, imported again by name) and
    open models by name in it; the refusal is :func:`featstore.tmpdir.private_tempdir`'s one line, and where a folder
    is found by then, it becomes the temporary folder and the import goes on. Then Keras's settings file and
    ``KERAS_BACKEND``, which Keras reads as it is imported (:func:`featstore.kerasconfig.problem`: a float16 or
    channels-first setting, another backend, a FIFO there), are one line instead of wrong features or a traceback."""

    def __init__(self, needs_tmp: bool = True):
        self.needs_tmp = needs_tmp

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ("tensorflow", "keras"):
            return None
        if self.needs_tmp:
            import tempfile

            from featstore.tmpdir import own_tempdir

            tempfile.tempdir = own_tempdir()  # ConfigError: the command's one line
            self.needs_tmp = False
        from featstore.kerasconfig import problem

        line = problem()
        if line is not None:
            raise ConfigError(line)
        return None


StoreOpt = Annotated[Path, typer.Option(help="HDF5 store file.")]
ExtractorOpt = Annotated[
    Optional[str], typer.Option(help="Extractor group in the store (needed when it holds several).")
]
RunsOpt = Annotated[Optional[Path], typer.Option(help="Runs folder (default: <store>.runs beside the store).")]


def refuse_runs_file(store: Path, runs: Path | None, missing: bool = False) -> None:
    """A file, FIFO, device, link loop or link to nothing where the runs folder should be is named so, before any work
    (``featstore.runs.folder.runs_root`` refuses them); with ``missing``, an explicit --runs naming nothing too (a typo:
    `report` built a site without runs, `runs` said "no runs yet")."""
    from featstore.errors import StoreError
    from featstore.runs.folder import no_runs_here, runs_root

    root = runs_root(store, runs)
    if missing and runs and not root.exists():
        raise StoreError(f"--runs {root} does not exist; pass --runs with the folder that holds the run folders")
    others = no_runs_here(root) if missing and runs else []
    if others:  # a project folder: its src/ and data/ were listed as broken runs, "Remove .../src and fit again"
        some = ", ".join(safe(n) for n in others[:3]) + (", ..." if len(others) > 3 else "")
        raise StoreError(
            f"{safe(str(root))} holds no featstore runs (its folders {some} hold no run.json); is it the right --runs? "
            f"Pass the folder `featstore fit --runs` wrote (default: <store>.runs beside the store)"
        )

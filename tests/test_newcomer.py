"""A newcomer's first commands: quiet start-up, no TensorFlow where it is not needed, readable help, sizes in units, plots."""

import importlib.machinery
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featstore import quiet
from featstore.cli import app
from featstore.experiments.streaming import format_bytes, parse_bytes

from .conftest import write_images

ROOT = Path(__file__).resolve().parents[1]


def python(*args, env_drop=(), env_add=None, **kwargs):
    """Run this checkout's Python in a fresh process; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in env_drop} | (env_add or {})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, **kwargs)


def test_extract_prints_no_tensorflow_start_up_noise(tmp_path):
    write_images(tmp_path / "data", "train", {"cat": 1}, seed=0)
    p = python(
        "-m",
        "featstore.cli",
        "extract",
        "--data",
        str(tmp_path / "data"),
        "--split",
        "train",
        "--store",
        str(tmp_path / "f.h5"),
        "--weights",
        "none",
        "--image-size",
        "32",
        "--no-progress",
        env_drop=("TF_CPP_MIN_LOG_LEVEL",),
    )
    assert p.returncode == 0, p.stderr
    assert "wrote 1 rows" in p.stdout
    noise = [
        line for line in p.stderr.splitlines() if line.strip() and "TensorFlow uses" not in line
    ]  # GPU machines: one line
    assert noise == [], "\n".join(noise)
    assert not re.search(r"cuInit|E0000|I0000|absl::InitializeLog", p.stderr)


def test_quiet_loader_drops_tensorflow_noise_and_replays_everything_else(capfd):
    class Loader:
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            os.write(
                2,
                b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                b"I0000 00:00:1 12 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
                b"E0000 00:00:1 12 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
                b"E0000 00:00:1 12 other.cc:1] a real problem\nplain text from a library\n",
            )

    module = types.ModuleType("fake_tf")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_tf", None)
    quiet._QuietLoader(Loader()).exec_module(module)  # no module.config: the GPU probe fails quietly
    assert capfd.readouterr().err == "E0000 00:00:1 12 other.cc:1] a real problem\nplain text from a library\n"


def test_a_failed_tensorflow_import_shows_everything_it_wrote(capfd):
    class Loader:
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            os.write(2, b"I0000 00:00:1 12 loader.cc:1] libcudart missing\n")
            raise ImportError("broken install")

    module = types.ModuleType("fake_tf")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_tf", None)
    with pytest.raises(ImportError, match="broken install"):
        quiet._QuietLoader(Loader()).exec_module(module)
    assert "libcudart missing" in capfd.readouterr().err


def test_import_has_no_side_effects_and_the_api_quiets_tensorflow_on_request(tmp_path):
    """``import featstore`` changes nothing in the process (no import hook, fd 2 untouched); the CLI quiets TensorFlow,
    and a Python user asks for the same with ``featstore.quiet_tensorflow()``."""
    p = python("-c", "import sys; n = len(sys.meta_path); import featstore; print(len(sys.meta_path) == n)")
    assert p.stdout.strip() == "True", p.stderr
    p = python(
        "-c",
        "import featstore; featstore.quiet_tensorflow(); import keras; print('ok')",
        env_drop=("TF_CPP_MIN_LOG_LEVEL",),
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert not re.search(r"cuInit|E0000|I0000|absl::InitializeLog", p.stderr), p.stderr
    loud = python(
        "-c",
        "import featstore; featstore.quiet_tensorflow(); import keras",
        env_drop=("TF_CPP_MIN_LOG_LEVEL",),
        env_add={"FEATSTORE_VERBOSE": "1"},
    )
    assert re.search(r"I0000|E0000|absl", loud.stderr), "FEATSTORE_VERBOSE=1 shows TensorFlow's own lines"


def test_commands_that_need_no_tensorflow_do_not_import_it(store, tmp_path):
    code = """
import json, sys
from typer.testing import CliRunner
from featstore.cli import app
store, runs = sys.argv[1], sys.argv[2]
out = {}
for args in (["--help"], ["info", store], ["check", store], ["classifiers"], ["models"], ["fit", "--clf", "logreg", "--store", store,
             "--runs", runs], ["runs", "--store", store, "--runs", runs], ["export", "--split", "test", "--store", store, "--out", runs + "/t.csv"]):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (args, r.output)
    out[" ".join(args[:1])] = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
print(json.dumps(out))
"""
    p = python("-c", code, str(store), str(tmp_path / "runs"))
    assert p.returncode == 0, p.stderr
    loaded = json.loads(p.stdout.splitlines()[-1])
    assert loaded == {k: [] for k in loaded} and len(loaded) == 8, loaded
    p = python(
        "-c",
        "import sys, featstore, featstore.cli; featstore.FeatureStore; print(sorted(set(sys.modules) & {'tensorflow', 'keras', 'sklearn'}))",
    )
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


def test_lazy_public_names_are_the_functions():
    import featstore
    import featstore.experiments.predict  # noqa: F401  (importing the modules changes nothing at the top)
    import featstore.store.export  # noqa: F401

    assert callable(featstore.export) and featstore.export.__module__ == "featstore.store.export"
    assert featstore.predict.__module__ == "featstore.experiments.predict"
    assert featstore.extract.__module__ == "featstore.extraction.pipeline"
    assert set(featstore.__all__) <= set(dir(featstore))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        featstore.nope  # noqa: B018


COMMANDS = [
    [],
    ["models"],
    ["extract"],
    ["info"],
    ["check"],
    ["fit"],
    ["classifiers"],
    ["export"],
    ["runs"],
    ["runs", "show"],
    ["runs", "compare"],
    ["runs", "evaluate"],
    ["ensemble"],
    ["predict"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "featstore")
def test_help_is_not_cut_at_80_columns(command):
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output and "lectures" not in r.output, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80


@pytest.mark.parametrize(
    "text, n",
    [
        ("4MB", 4_000_000),
        ("4MiB", 4 * 2**20),
        ("4 mib", 4 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("512kB", 512_000),
        ("2KiB", 2048),
        ("100", 100),
        ("100 bytes", 100),
        (7, 7),
    ],
)
def test_parse_bytes_reads_decimal_and_binary_units(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize(
    "n, text",
    [
        (4 * 2**20, "4.19 MB (4 MiB)"),
        (4_000_000, "4 MB (3.81 MiB)"),
        (512 * 10**6, "512 MB (488 MiB)"),
        (3 * 2**29, "1.61 GB (1.5 GiB)"),
        (999, "999 bytes"),
        (999_999, "1 MB (977 KiB)"),
        (16384, "16.4 kB (16 KiB)"),
        (2 * 10**12, "2 TB (1.82 TiB)"),
    ],
)
def test_format_bytes_shows_both_unit_families(n, text):
    assert format_bytes(n) == text


def test_bad_size_names_both_unit_families():
    with pytest.raises(Exception, match=r"--memory-budget '4 MBs' is not a size; .*KiB, MiB, GiB, TiB powers of 1024"):
        parse_bytes("4 MBs")


def test_plots_are_written(tmp_path):
    from featstore.plots import _wide_positive, compare_png, curves_png

    assert _wide_positive([28.0, 0.9, 0.5]) and not _wide_positive([2.33, 2.28]) and not _wide_positive([1.0, 0.0])

    curves_png(
        {"loss": [28.0, 0.9, 0.5], "val_loss": [3.0, 1.0, 0.7], "accuracy": [0.3, 0.7, 0.8]}, "r", tmp_path / "c.png"
    )
    compare_png(
        [f"run-{i}" for i in range(20)], {"validation": [0.5] * 20, "test": [0.6] * 19 + [None]}, tmp_path / "cmp.png"
    )
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "cmp.png").stat().st_size > 1000


def test_curves_mark_the_epoch_whose_weights_a_finetuned_run_kept(tmp_path, monkeypatch):
    from featstore import plots
    from featstore.runs.kinds import FinetuneKind

    kind = FinetuneKind()
    phase_a = {"loss": [1.0, 0.8, 0.7, 0.6, 0.65]}
    assert kind.kept_epoch({"phase_a_history": phase_a, "restored_epoch": 2}) == 7  # phase B's epoch 2, after 5
    assert kind.kept_epoch({"phase_a_history": phase_a, "restored_epoch": 0}) == 5  # phase A's weights kept
    assert kind.kept_epoch({"phase_a_history": {}, "restored_epoch": 3}) == 3  # a fresh head: phase B alone
    assert kind.kept_epoch({"phase_a_history": phase_a}) is None  # recorded before restored_epoch existed

    lines = []
    real = plots.pyplot

    def spy():
        plt = real()
        original = plt.Axes.axvline

        def axvline(self, x=0, *args, **kwargs):
            lines.append((x, kwargs.get("label")))
            return original(self, x, *args, **kwargs)

        monkeypatch.setattr(plt.Axes, "axvline", axvline)
        return plt

    monkeypatch.setattr(plots, "pyplot", spy)
    plots.curves_png(phase_a, "r", tmp_path / "c.png", then={"loss": [0.5, 0.4, 0.45]}, kept=7)
    assert (7, "weights kept (epoch 7)") in lines and (5.5, "phase A | phase B (fine-tuning)") in lines


def test_report_curves_mark_the_kept_epoch_too():
    from featstore.report.site import charts

    phase_a = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95], "accuracy": [0.5, 0.6, 0.7]}
    phase_b = {"loss": [0.5, 0.4], "val_loss": [0.8, 0.85], "accuracy": [0.8, 0.85]}
    fig = charts.curves_figure(phase_a, phase_b, kept=4)
    assert sorted(s.x0 for s in fig.layout.shapes) == [3.5, 3.5, 4, 4]  # the phase boundary and the kept epoch, twice
    assert "weights kept (epoch 4)" in [a.text for a in fig.layout.annotations]
    assert not [s for s in charts.curves_figure(phase_a).layout.shapes]  # nothing marked when nothing is known

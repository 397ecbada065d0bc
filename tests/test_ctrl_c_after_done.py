"""Attack 64 #5: Ctrl-C in the second or two after a command ended (its run recorded, its last line printed), while
the interpreter shuts down, gave exit 130 or a KeyboardInterrupt traceback; a script's `featstore fit || featstore fit`
recorded the fit twice. Once the command has ended, SIGINT is ignored until the process exits."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import os, signal, sys, threading, time
sys.argv[0] = "/usr/local/bin/featstore"  # the console script
from featstore.cli import app
threading.Thread(target=time.sleep, args=(1.0,)).start()  # a library's thread the shut-down waits for
try:
    app(["classifiers"], prog_name="featstore")
except SystemExit:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once the command has ended, as the interpreter shuts down
    time.sleep(0.2)
    raise
"""


def test_ctrl_c_while_a_finished_command_shuts_down_keeps_its_status():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "KeyboardInterrupt" not in done.stderr, (done.returncode, done.stderr[-2000:])
    assert "logreg" in done.stdout


def test_a_script_calling_the_app_keeps_its_ctrl_c():
    """Attack 66 #1: a script (benchmarks/startup.py) or notebook that calls app(...), catches SystemExit and goes on
    could no longer be stopped with Ctrl-C."""
    script = """
import os, signal, time
from featstore.cli import app
try:
    app(["classifiers"], prog_name="featstore")
except SystemExit:
    pass
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip().endswith("interrupted") and "not" not in done.stdout, (done.stdout, done.stderr[-2000:])

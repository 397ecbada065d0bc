

def test_a_link_at_a_runs_lock_name_is_refused_not_truncated(run, tmp_path):
    """The per-run lock file is opened with O_TRUNC (filelock): a link planted at its name is refused, never followed."""
    store, runs, rid = run
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    os.symlink(victim, runs / f".{rid}.lock")
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and f".{rid}.lock" in out and "remove it" in out, out
    assert victim.read_text() == "precious"

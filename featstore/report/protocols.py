"""Tables of the probe and few-shot protocols, as the commands print them (Markdown, each figure with its interval).

>>> print(interval({"estimate": 0.81, "low": 0.722, "high": 0.874}))
0.810 [0.722, 0.874]
"""

from __future__ import annotations

from featstore.outputs import terminal_safe


def interval(ci: dict | None, digits: int = 3) -> str:
    """``estimate [low, high]`` of an interval record (``-`` when there is none)."""
    if not ci:
        return "-"
    return f"{ci['estimate']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def probe_table(summary: dict) -> str:
    """The probe's summary as a Markdown table: per extractor, the linear and kNN probe with validation and test
    accuracy, each with its 95 % Wilson interval; the protocol and notes under it."""
    p = summary["protocol"]
    lines = [
        f"{summary['id']} ({summary['seconds']:.1f} s): {p['preprocessing']}; chosen on validation; {p['refit']}; "
        f"{p['test']}",
        "",
        "| extractor | probe | chosen | validation [95 % CI] | test [95 % CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    notes = list(summary.get("notes") or [])  # the rows rule's: shared or not compared rows (attack 76 #2)
    for c in summary["cells"]:
        c = {**c, "extractor": terminal_safe(c["extractor"])}  # a crafted store's group name: no escape sequences
        lin = c["linear"]
        lines.append(
            f"| {c['extractor']} | linear (logistic regression, {lin['fits']} Cs) | C={lin['C']:.3g} | "
            f"{interval(lin['validation_ci'])} | {interval(lin['test_ci'])} |"
        )
        notes += [f"{c['extractor']}: {n}" for n in lin["notes"]]
        k = c["knn"]
        if k:
            lines.append(
                f"| {c['extractor']} | kNN (cosine, 1/distance votes; k of {', '.join(str(x['k']) for x in k['ks'])}) | "
                f"k={k['k']} | {interval(k['validation_ci'])} | {interval(k['test_ci'])} |"
            )
            notes += [f"{c['extractor']}: {n}" for n in k["notes"]]
    lines += ["", best_line(summary["best"])]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _probe_name(b: dict) -> str:
    return f"{terminal_safe(b['extractor'])}, {b['probe']} probe"


def best_line(b: dict) -> str:
    """The probe's best on validation in words: the probes that tie at the top named ("alpha, knn probe and beta,
    knn probe tie at 0.700"), and the best against the runner-up: within noise or not, by the paired test on the
    same validation rows (or the intervals' overlap), never a plain claim (attack 63 #9). A summary written before
    (no ``tied``/``versus``) reads as it did."""
    tied = b.get("tied") or []
    if tied:
        names = [_probe_name(t) for t in tied]
        head = f"best on validation: {', '.join(names[:-1])} and {names[-1]} tie at {b['validation']:.3f}"
    else:
        head = f"best on validation: {_probe_name(b)} ({b['validation']:.3f})"
    r, v = b.get("runner_up"), b.get("versus")
    if not r or not v:  # one probe only, or a summary written before
        return head
    if "p" in v:
        ahead = v["verdict"] == "larger than chance"
        why = f"McNemar p = {v['p']:.2g} on {v['discordant']} discordant of {v['n']} validation rows"
    else:
        ahead = v["verdict"].startswith("the intervals do not")
        why = f"95 % intervals {'apart' if ahead else 'overlap'}; other validation rows, no paired test"
    who = "the tied probes are" if tied else "it is"
    return (
        f"{head}; {who} {'ahead of' if ahead else 'within noise of'} the runner-up {_probe_name(r)} "
        f"({r['validation']:.3f}): {why} (chosen on these rows: compare on test)"
    )


def fewshot_table(summary: dict) -> str:
    """The few-shot curve as a Markdown table: per k, mean ± sd of test accuracy over the distinct draws, the mean's
    95 % interval (Student t over them), and the range; a k of one distinct draw is one fit, without sd or interval."""
    lines = [
        f"{summary['id']}: {summary['clf']} {summary['params'] or '(default parameters)'} on "
        f"{terminal_safe(summary['extractor'])}, k images per class drawn from {summary['splits']['train']!r} "
        f"({summary['trials']} trials, seed {summary['seed']}; {summary['sampling']}), accuracy on all "
        f"{summary['test_rows']} rows of {summary['splits']['test']!r} ({summary['seconds']:.1f} s)",
        "",
        "| images per class | training rows | test accuracy, mean ± sd | 95 % CI of the mean | min | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in summary["points"]:
        n, ci = p.get("draws", len(p["trials"])), p["mean_ci"]
        one = "one trial" if summary["trials"] == 1 else "one fit"
        mean = f"{p['mean']:.3f} ({one})" if p["sd"] is None or n == 1 else f"{p['mean']:.3f} ± {p['sd']:.3f}"
        if 1 < n < summary["trials"]:
            mean += f" over {n} distinct draws"
        span = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else f"- ({one})"
        lines.append(
            f"| {p['shots']} | {p['rows']} | {mean} | {span} | {min(p['trials']):.3f} | {max(p['trials']):.3f} |"
        )
    lines += [f"note: {n}" for n in summary["notes"]]
    return "\n".join(lines)

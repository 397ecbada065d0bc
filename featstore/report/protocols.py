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
    notes = []
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
    b = summary["best"]
    lines += ["", f"best on validation: {terminal_safe(b['extractor'])}, {b['probe']} probe ({b['validation']:.3f})"]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def fewshot_table(summary: dict) -> str:
    """The few-shot curve as a Markdown table: per k, mean ± sd of test accuracy over the trials, the mean's 95 %
    interval (Student t over the trials), and the range."""
    lines = [
        f"{summary['id']}: {summary['clf']} {summary['params'] or '(default parameters)'} on {terminal_safe(summary['extractor'])}, "
        f"k images per class drawn from {summary['splits']['train']!r} ({summary['trials']} trials, seed "
        f"{summary['seed']}; {summary['sampling']}), accuracy on all {summary['test_rows']} rows of "
        f"{summary['splits']['test']!r} ({summary['seconds']:.1f} s)",
        "",
        "| images per class | training rows | test accuracy, mean ± sd | 95 % CI of the mean | min | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in summary["points"]:
        ci = p["mean_ci"]
        span = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "- (one trial)"
        lines.append(
            f"| {p['shots']} | {p['rows']} | {p['mean']:.3f} ± {p['sd']:.3f} | {span} | "
            f"{min(p['trials']):.3f} | {max(p['trials']):.3f} |"
        )
    lines += [f"note: {n}" for n in summary["notes"]]
    return "\n".join(lines)

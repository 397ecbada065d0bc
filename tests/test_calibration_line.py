"""Attack 65 #10: one fit printed two "before calibration" log-losses for the same rows ("NLL 4.030" on the calibration
line, 15.769 on the validation line): the first is the temperature fit's objective, exact zeros floored; it says so."""

from __future__ import annotations

from featstore.report.runs import calibration_line


class _Rec:
    calibration = {"method": "temperature", "T": 1.5, "fitted_on": "validation", "n": 40}


def test_the_calibration_line_says_whose_log_loss_it_prints():
    rec = _Rec()
    rec.calibration = dict(_Rec.calibration, nll_before=4.03, nll_after=1.2)
    line = calibration_line(rec)
    assert "log-loss 4.030 -> 1.200 as the fit sees it (exact zeros floored)" in line and "NLL" not in line, line

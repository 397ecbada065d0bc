"""Uncertainty and quality of the figures featstore prints: intervals, paired tests, metrics, calibration.

Pure numpy (scipy imported inside the few functions that need it); nothing here imports scikit-learn or
TensorFlow, so ``featstore runs`` stays fast.

- :mod:`~featstore.stats.intervals`: the Wilson and Clopper-Pearson intervals of a proportion, a percentile
  bootstrap for any other figure, mean ± sd over seeds;
- :mod:`~featstore.stats.exact`: conservative exact intervals of a figure whose bootstrap is degenerate;
- :mod:`~featstore.stats.paired`: two classifiers on the same rows, the exact McNemar test and a paired score
  interval of the difference (Tango's, widened on few discordant rows), and a sentence saying whether it is larger than chance;
- :mod:`~featstore.stats.metrics`: top-k, balanced accuracy, macro-F1, log-loss, ECE with reliability bins;
- :mod:`~featstore.stats.calibration`: temperature scaling fitted on held-out rows (never changes a prediction);
- :mod:`~featstore.stats.folds`: cross-validation folds that keep the copies of one image together.

>>> [round(b, 4) for b in wilson_interval(81, 100)]
[0.7222, 0.8749]
"""

from featstore.stats.calibration import apply_calibration, fit_temperature, identity_calibration, softmax
from featstore.stats.folds import stratified_group_folds
from featstore.stats.intervals import (
    Z95,
    Interval,
    bootstrap_interval,
    clopper_pearson,
    mean_sd,
    mean_tolerance,
    proportion_interval,
    wilson_interval,
)
from featstore.stats.metrics import (
    Reliability,
    ReliabilityBin,
    balanced_accuracy,
    expected_calibration_error,
    log_loss,
    macro_f1,
    reliability,
    split_metrics,
    top_k_accuracy,
)
from featstore.stats.paired import (
    McNemar,
    PairedComparison,
    compare_predictions,
    describe_difference,
    mcnemar,
    mcnemar_p,
    paired_bootstrap,
    paired_interval,
)

__all__ = [
    "Z95",
    "Interval",
    "McNemar",
    "PairedComparison",
    "Reliability",
    "ReliabilityBin",
    "apply_calibration",
    "balanced_accuracy",
    "bootstrap_interval",
    "clopper_pearson",
    "compare_predictions",
    "describe_difference",
    "expected_calibration_error",
    "fit_temperature",
    "identity_calibration",
    "log_loss",
    "macro_f1",
    "mcnemar",
    "mcnemar_p",
    "mean_sd",
    "mean_tolerance",
    "paired_bootstrap",
    "paired_interval",
    "proportion_interval",
    "reliability",
    "softmax",
    "split_metrics",
    "stratified_group_folds",
    "top_k_accuracy",
    "wilson_interval",
]

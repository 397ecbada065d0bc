"""Options that take a comma-separated list, given more than once (attack 65 #2).

Click keeps only the last value of an option given twice: ``sweep --clf logreg --clf knn --clf sgd`` fitted sgd alone
and said "1 fit", exit 0. Such an option is declared a list (``multiple``), so :func:`given_once` sees every value and
refuses the repeats in one line that names the comma form.
"""

from __future__ import annotations

from featstore.errors import ConfigError


def given_once(values: list[str], option: str) -> str:
    """The one value of a comma-list option; ConfigError naming the comma form where it was given more than once
    (``--clf logreg --clf knn`` fitted knn alone, exit 0: attack 65 #2).

    >>> given_once(["logreg,knn"], "--clf")
    'logreg,knn'
    >>> given_once(["logreg", "knn", "sgd"], "--clf")
    Traceback (most recent call last):
    featstore.errors.ConfigError: --clf given 3 times; list the values once, comma-separated: --clf logreg,knn,sgd
    """
    if len(values) > 1:
        raise ConfigError(
            f"{option} given {len(values)} times; list the values once, comma-separated: {option} {','.join(values)}"
        )
    return values[0]

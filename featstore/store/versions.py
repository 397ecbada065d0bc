"""A split's version (its ``split_id``, times and commit record) taken before a command reads it, compared after: a
split re-written meanwhile (``extract --overwrite`` in another process) is refused, never paired with what was read
before it (attack 54 #2: labels and predictions of the old split, paths and listing of the new)."""

from __future__ import annotations

from featstore.errors import StoreError
from featstore.store.layout import same_split


class Rewritten(StoreError):
    """A split re-written while a command read it (:func:`refuse_rewritten`)."""


def split_versions(fs, name: str, splits) -> dict[str, tuple]:
    """Each split's version (:func:`featstore.store.layout.same_split`), in one opening of ``fs``'s file: taken before
    a command reads them, compared by :func:`refuse_rewritten` once it has read what it records."""
    with fs.file.open("r") as f:
        return {s: same_split(f, f"{name}/{s}", None, f"{fs.path}:/{name}/{s}") for s in splits}


def refuse_rewritten(fs, name: str, versions: dict[str, tuple], what: str = "fit", again: str = "Run the fit") -> None:
    """StoreError when a split is not the version :func:`split_versions` saw: ``what`` read a mix of two versions;
    nothing is recorded, and ``again`` says how to redo it."""
    with fs.file.open("r") as f:
        for s, seen in versions.items():
            try:
                same_split(f, f"{name}/{s}", seen, f"{fs.path}:/{name}/{s}")
            except StoreError:
                raise Rewritten(
                    f"{fs.path}:/{name}/{s} was re-written (by another process?) while this {what} read and scored it; "
                    f"nothing was recorded. {again} again once that extraction has finished"
                ) from None

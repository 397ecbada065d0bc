"""What a resumed split must share with the run that started it, else the resume is refused with both sides shown:
the same images and write options (:data:`RESUME_KEYS`), and the same way of computing its features beyond the
fingerprint (:data:`NUMERICS`: ``--jit``, ``--runtime``, TensorFlow's oneDNN, the engine), whose rows differ in their
last digits. Augmented copies are held to their split's :data:`NUMERICS` too (:func:`numerics_differ`).
:mod:`featstore.extraction.same_numerics` checks the bits themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

from featstore.errors import StoreError
from featstore.provenance import plain


def resume_advice(split: str | None = None, augment: bool | int = False) -> str:
    """How a split (``augment``: its augmented copies, their count K when known) an extract left incomplete is finished: the one phrase every
    command says. A resume needs the options that started it, and --overwrite starts the split again instead (the
    committed rows discarded, as that extract then says), so the phrase says both (attack 68 #7)."""
    which = " ".join(
        ([f"--split {split}"] if split else [])
        + ([f"--augment {'K' if augment is True else augment}"] if augment else [])
    )
    return (
        f"re-run `featstore extract` with the options that started it{f' ({which})' if which else ''} but without "
        f"--overwrite to resume it (with --overwrite it starts again)"
    )


def discarded_note(images: int, split: str, refused: str | None = None) -> str:
    """What ``extract --overwrite`` says (before its work and in its last line) when it starts again a split that an
    interrupted extract had left with ``images`` images done: a resume would have kept them (attack 68 #7), said only
    where the same command without --overwrite would resume; else ``refused`` (:func:`resume_refusal`) says why it
    would not (attack 70 #5)."""
    said = (
        f"--overwrite discards the {images} images an interrupted extract of split {split} had done and extracts them "
        "again"
    )
    if refused is None:
        return f"{said}; without --overwrite it resumes after them"
    return f"{said} (this command without --overwrite would not resume after them: {refused})"


def resume_refusal(stored: Iterable[dict], new: dict, fixed: bool | str = False) -> str | None:
    """Why a resume of a partial split (each extractor group's attributes ``stored``) under this run's attributes
    ``new`` is refused (what :func:`refuse_resume` or a split that cannot grow says); None where it would resume."""
    if fixed:
        return fixed if isinstance(fixed, str) else "its datasets cannot grow, as a repack or another tool left them"
    for attrs in stored:
        if changed := _changed(attrs, new):
            return f"it was started with another {', '.join(changed)}"
        if differ := numerics_differ(attrs, new):
            return f"it was started {differ[1]} and this run is {differ[2]}"
    return None


# Split attributes that must be the same to resume a partial split (the rest describe the run).
RESUME_KEYS = {"listing_sha256": "set of images", "batch_size": "--batch-size", "compression": "--compression"}
# Split attributes recorded, not fingerprinted, that change features in their last digits: a resume under another value
# is refused. Key: (the value of a store made before it, how a value is said, why they differ).
NUMERICS = {
    "jit": (False, lambda v: f"with{'' if v else 'out'} --jit (jit={bool(v)})", "XLA-compiled features differ from uncompiled ones in the last digits"),
    "runtime": ("keras", lambda v: f"with --runtime {v} (runtime={v!r} in Python)", "the two runtimes' features differ in the last digits"),
    "onednn": (None, lambda v: f"with TensorFlow's oneDNN {'on (TF_ENABLE_ONEDNN_OPTS=1' if v else 'off (TF_ENABLE_ONEDNN_OPTS=0'} in the shell)", "oneDNN's kernels give features that differ from TensorFlow's own in the last digits"),
    "engine": (None, lambda v: f"with --engine {v} (engine={v!r} in Python)", "the engines call the model on other groups of images with other threads, whose features differ in the last digits"),
}  # fmt: skip


def refuse_resume(stored: dict, new: dict, split: str, name: str, path) -> None:
    """Refuse resuming a partial split that was started with other images or write options."""
    if changed := _changed(stored, new):
        raise StoreError(
            f"split {split!r} of {name!r} in {path} was started with another {', '.join(changed)}; resuming would "
            f"mix two different runs. Re-run with the same options, or pass --overwrite (overwrite=True in Python) to start it "
            f"again"
        )
    if differ := numerics_differ(stored, new):
        _, then, now, why = differ
        raise StoreError(
            f"split {split!r} of {name!r} in {path} was started {then} and this run is {now}: {why}, so the split "
            f"would hold rows of both kinds. Resume it {then}, or start it again {now} by adding --overwrite "
            f"(overwrite=True)"
        )


def _changed(stored: dict, new: dict) -> list[str]:
    """Each of :data:`RESUME_KEYS` on which ``stored`` and ``new`` differ, said with both values."""
    return [
        f"{what} ({stored.get('n_images')} images then, {new['n_images']} now)"
        if key == "listing_sha256"
        else f"{what} ({plain(stored.get(key))} then, {new[key]} now)"
        for key, what in RESUME_KEYS.items()
        if plain(stored.get(key)) != new[key]
    ]


def numerics_differ(stored: dict, new: dict) -> tuple[str, str, str, str] | None:
    """(the key, how ``stored`` was computed, how ``new`` would be, why they differ) at the first :data:`NUMERICS` key on
    which they differ; a key one side does not know (a store before it, ONNX's oneDNN: None) is none. None where none
    do."""
    for key, (before, said, why) in NUMERICS.items():
        then, now = plain(stored.get(key, before)), new.get(key, before)
        if None not in (then, now) and then != now:
            return key, said(then), said(now), why
    return None

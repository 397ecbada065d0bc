"""The local engine: decode threads ahead of the model in this process, the forward pass at commit time.

>>> engine = LocalEngine(decode_threads=4)      # doctest: +SKIP
>>> extract("data", "train", "features.h5", config, engine=engine)   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import numpy as np

from featstore.errors import ConfigError
from featstore.images.decode import iter_decoded


def default_decode_threads() -> int:
    """Decode threads when not given: two per core, at most 8."""
    return min(8, (os.cpu_count() or 2) * 2)


class LocalEngine:
    """Decodes with ``decode_threads`` threads (0: between model calls, in this thread), ``4 x batch_size`` images
    ahead of the model, and runs the extractor here (``jit``: compiled when it was built). The model's warm-up (its
    trace and TensorFlow's first-call optimisation, mostly one core) runs after the decode threads started, so the
    first batches are decoded meanwhile instead of the first batch waiting for its images with the model idle."""

    name = "local"
    steady_state = False  # nothing to wait for before the first image: images/s over the whole loop

    def __init__(self, decode_threads: int | None = None):
        self.decode_threads = default_decode_threads() if decode_threads is None else decode_threads
        self.extractor, self.ahead = None, 128

    def start(self, root, first_image: str | None) -> float:
        """Nothing to connect to."""
        return 0.0

    def bind(self, extractor, *, jit: bool = False, batch_size: int = 32) -> None:
        """Run ``extractor`` in the next pass (built by the caller, compiled or not)."""
        self.extractor, self.ahead = extractor, 4 * batch_size  # warmed up in outcomes(), beside the first decodes

    def outcomes(self, files: list[str]) -> Iterator[tuple[np.ndarray | None, str]]:
        """(decoded image or None, failure reason) for every file, in order. Start-up, before the first outcome is
        asked for: the decode threads start (``ahead`` images queued), then the model warms up while they decode."""
        decoded = iter_decoded(files, self.extractor.config.image_size, self.decode_threads, self.ahead)
        try:
            head = list(itertools.islice(decoded, 1))  # queues `ahead` decodes and waits for the first image only
            warm_up(self.extractor)  # the trace and first-call optimisation at start-up, not in the first batch
        except BaseException:
            decoded.close()
            raise
        return Outcomes(head, decoded)

    def forward(self, payloads: list[np.ndarray], transform=None) -> list[np.ndarray]:
        """Features per output of one batch of decoded images (``transform``: applied to the uint8 batch first)."""
        images = np.stack(payloads)
        try:
            return self.extractor.features(images if transform is None else transform(images))
        except Exception as exc:
            refuse_out_of_memory(exc, len(images), self.extractor)
            raise

    def close(self) -> None:
        """Nothing to release."""


def warm_up(extractor) -> None:
    """``extractor.warm_up()`` (one image through the forward pass), its out of memory said in one line: the first
    image a preset's attention could not hold ended extract in a 73-line TensorFlow traceback (attack 35 #5)."""
    try:
        extractor.warm_up()
    except Exception as exc:
        refuse_out_of_memory(exc, 1, extractor)
        raise


class OutOfMemory(ConfigError):
    """:func:`refuse_out_of_memory`'s line (a caller whose batch is not --batch-size says its own)."""


def refuse_out_of_memory(exc: Exception, n: int, extractor=None) -> None:
    """Raise the one line for out of memory (TensorFlow's, numpy's) in the forward pass of a batch of ``n`` images by
    ``extractor`` (the local engine's and each Ray actor's), with only the fixes that can help
    (:func:`~featstore.models.activations.memory_advice`: no smaller --batch-size at a batch of 1, no --pooling, which
    pools after the cut; attack 37 #1); any other error is left to the caller."""
    if type(exc).__name__ == "ResourceExhaustedError" or isinstance(exc, MemoryError):  # numpy's: the prepared input
        from featstore.models.activations import memory_advice

        raise OutOfMemory(
            f"the forward pass ran out of memory on a batch of {n} images ({(str(exc).splitlines() or [''])[0][:160]}"
            f"): {memory_advice(extractor, n)}"
        ) from None


class Outcomes:
    """The (image or None, reason) pairs of :meth:`LocalEngine.outcomes`: ``head`` (already decoded), then the rest of
    ``decoded``; ``close()`` stops the decode threads whether or not iteration began."""

    def __init__(self, head: list, decoded):
        self.head, self.decoded = head, decoded

    def __iter__(self) -> Outcomes:
        return self

    def __next__(self) -> tuple[np.ndarray | None, str]:
        _, img, reason = self.head.pop(0) if self.head else next(self.decoded)
        return img, reason

    def close(self) -> None:
        self.decoded.close()

"""A bound on what Keras allocates while it builds a model from a config, checked by Keras's own variables.

:mod:`featstore.models.keras_sizes` bounds a ``.keras`` file's config before TensorFlow is imported, by formulas for
every layer class it knows; attacks 21 and 24 found layers and graphs whose sizes the formulas missed (a shape-growing
layer before a Dense, a KerasHub block sized by its input, a registered name Keras ignores), each a 15-50 KB file that
made Keras allocate 4-16 GB before it read a weight. This module closes that class of holes at the source: while a
model is built (:func:`bounded_build`), every variable Keras creates from an initializer is counted *before* its
initial value is made, and the build stops with :class:`TooLarge` once the parameters pass what the weights file holds
plus :data:`~featstore.models.keras_sizes.SLACK`. A genuine model builds exactly what its weights file holds.

It wraps the backend's ``Variable._initialize_with_initializer`` (Keras 3: every ``add_weight`` with an initializer goes
through it, the initial tensor made inside) for the duration of the build only. Example::

    with bounded_build(held, "my_cnn.keras"):
        model = keras.saving.load_model("my_cnn.keras", compile=False)
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

from featstore.errors import ConfigError

_LOCK = threading.Lock()  # one build bounded at a time in a process (the wrapper is the class's, not a thread's)


class TooLarge(ConfigError):
    """A model whose build asked for more parameters than its weights file holds (plus the slack)."""


@contextlib.contextmanager
def bounded_build(held: int, where: str) -> Iterator[None]:
    """Count the parameters Keras's variables ask for while the block runs; :class:`TooLarge` (raised from inside
    Keras, and again when the block ends, whatever Keras made of it) once they pass ``held + SLACK``."""
    from keras.src import backend

    from featstore.models.keras_sizes import SLACK

    cls = backend.Variable
    real = cls._initialize_with_initializer
    asked, refused = [0], []

    def counted(self, initializer):
        asked[0] += math.prod(int(d) for d in (self._shape or ()))
        if asked[0] > held + SLACK and not refused:
            variable = getattr(self, "path", "?")
            refused.append(
                f"{where} is refused while Keras builds it: its config.json asks for more than {held + SLACK:,} "
                f"parameters (its weights hold {held:,}; the variable {variable!r} took the count to {asked[0]:,}) "
                f"before a weight is read: the config was edited or belongs to other weights"
            )
        if refused:
            raise TooLarge(refused[0])
        return real(self, initializer)

    with _LOCK:
        cls._initialize_with_initializer = counted
        try:
            yield
        except Exception:
            if refused:  # Keras wraps what a layer's build raises: the reason is ours
                raise TooLarge(refused[0]) from None
            raise
        finally:
            cls._initialize_with_initializer = real
        if refused:
            raise TooLarge(refused[0])

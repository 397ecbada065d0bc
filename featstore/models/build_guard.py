"""A bound on what Keras allocates while it builds a model from a config, checked by Keras's own variables.

:mod:`featstore.models.keras_sizes` bounds a ``.keras`` file's config before TensorFlow is imported, by formulas for
every layer class it knows; attacks 21 and 24 found layers and graphs whose sizes the formulas missed (a shape-growing
layer before a Dense, a KerasHub block sized by its input, a registered name Keras ignores), each a 15-50 KB file that
made Keras allocate 4-16 GB before it read a weight. This module closes that class of holes at the source: while a
model is built (:func:`bounded_build`), every variable Keras creates from an initializer is counted *before* its
initial value is made, and the build stops with :class:`TooLarge` once the parameters pass what the weights file holds
plus :data:`~featstore.models.keras_sizes.SLACK`. A genuine model builds exactly what its weights file holds.

It wraps the backend's ``Variable._initialize_with_initializer`` (Keras 3: every ``add_weight`` with an initializer goes
through it, the initial tensor made inside) for the duration of the build only. A variable Keras makes from a value
instead (a stateful RNN's states: ``RNN._create_state_variables`` fills ``ops.zeros(batch, ...)`` then copies it into
a ``Variable``; attack 25 found 2 GB of ConvLSTM states made that way, never counted) is counted too: the zeros of a
layer's states before they are filled (``ops.zeros`` is wrapped while that method runs, in the building thread), and
any other variable made from a value (``Variable._initialize``) before Keras copies the value. Example::

    with bounded_build(held, "my_cnn.keras"):
        model = keras.saving.load_model("my_cnn.keras", compile=False)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from featstore.errors import ConfigError

_LOCK = threading.Lock()  # one build bounded at a time in a process (the wrapper is the class's, not a thread's)


class TooLarge(ConfigError):
    """A model whose build asked for more parameters than its weights file holds (plus the slack)."""


@contextlib.contextmanager
def bounded_build(held: int, where: str) -> Iterator[None]:
    """Count the parameters Keras's variables (and a stateful layer's states) ask for while the block runs;
    :class:`TooLarge` (raised from inside Keras, and again when the block ends, whatever Keras made of it) once they
    pass ``held + SLACK``."""
    from keras.src import backend, ops
    from keras.src.layers.rnn.rnn import RNN

    from featstore.models.keras_sizes import EDITED, SLACK, STATES

    cls = backend.Variable
    real, real_value, real_states, real_zeros = (
        cls._initialize_with_initializer, cls._initialize, RNN._create_state_variables, ops.zeros
    )  # fmt: skip
    asked, refused, prepaid, inside, builder = [0], [], [0], [0], threading.get_ident()

    def charge(n: int, what: str, states: bool = False) -> None:
        asked[0] += n
        if asked[0] > held + SLACK and not refused:
            refused.append(
                f"{where} is refused while Keras builds it: its config.json asks for more than {held + SLACK:,} "
                f"parameters (its weights hold {held:,}; {what} took the count to {asked[0]:,}) before a weight is "
                f"read: " + (STATES if states else EDITED)
            )
        if refused:
            raise TooLarge(refused[0])

    def counted(self, initializer):
        charge(_elements(self._shape), f"the variable {getattr(self, 'path', '?')!r}")
        inside[0] += 1  # the initial value is made here: not counted again below
        try:
            return real(self, initializer)
        finally:
            inside[0] -= 1

    def counted_value(self, value):
        if not inside[0] and not callable(value):
            n = _elements(getattr(value, "shape", ()))
            paid = min(n, prepaid[0])  # zeros already counted (states): the variable copies them
            prepaid[0] -= paid
            charge(n - paid, f"the variable {getattr(self, 'name', '?')!r} (made from a value)")
        return real_value(self, value)

    def states(self, batch_size):
        def zeros(shape, dtype=None):
            if threading.get_ident() == builder:
                n = _elements(shape)
                charge(n, f"the states of stateful layer {getattr(self, 'name', '?')!r} (batch {batch_size})", True)
                prepaid[0] += n
            return real_zeros(shape, dtype=dtype)

        ops.zeros = zeros
        try:
            return real_states(self, batch_size)
        finally:
            ops.zeros = real_zeros

    with _LOCK:
        cls._initialize_with_initializer, cls._initialize, RNN._create_state_variables = counted, counted_value, states
        try:
            yield
        except Exception:
            if refused:  # Keras wraps what a layer's build raises: the reason is ours
                raise TooLarge(refused[0]) from None
            raise
        finally:
            cls._initialize_with_initializer, cls._initialize, RNN._create_state_variables = (
                real,
                real_value,
                real_states,
            )
            ops.zeros = real_zeros
        if refused:
            raise TooLarge(refused[0])


def _elements(shape) -> int:
    """The numbers a tensor of ``shape`` holds (an unknown or symbolic dimension counts 1)."""
    total = 1
    for d in shape or ():
        try:
            total *= max(0, int(d)) if d is not None else 1
        except (TypeError, ValueError):
            total *= 1
    return total

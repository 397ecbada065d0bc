"""Attack 25 #6 and #7: a stateful RNN's states were counted by neither bound for ConvLSTM1D/2D/3D (the formulas
counted the kernel only) nor for the generic ``RNN(cell, stateful=True)`` wrapper (weightless), and ``build_guard``
never saw them (Keras makes them from ``ops.zeros``, not from an initializer): a 90 KB ConvLSTM2D file with its
``batch_shape`` edited made Keras fill 2 GB of states before featstore said a word. Each test was shown to fail with
its fix undone (one edit each, then restored)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest


def _edited(tmp_path, model, small: list, big: list):
    """``model`` saved, and a copy with only its batch shape ``small`` edited to ``big`` in config.json."""
    path = tmp_path / "small.keras"
    model.save(path)
    out = tmp_path / "big.keras"
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(out, "w") as w:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "config.json":
                text = data.decode()
                assert json.dumps(small) in text
                data = text.replace(json.dumps(small), json.dumps(big)).encode()
            w.writestr(info, data)
    return path, out


def _convlstm(batch_shape):
    import keras
    from keras import layers as L

    x = keras.Input(batch_shape=batch_shape)
    y = L.ConvLSTM2D(4, 3, strides=2, padding="same", stateful=True, name="clstm")(x)
    return keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(y)))


def _wrapped(batch_shape):
    import keras
    from keras import layers as L

    x = keras.Input(batch_shape=batch_shape)
    return keras.Model(x, L.Dense(2)(L.RNN(L.LSTMCell(8), stateful=True, name="r")(x)))


@pytest.mark.parametrize(
    "make, small, big, said",
    [
        # 2 x 1400 x 44 x 44 x 4 states (88 px, strides 2, "same"): 21.7 M numbers
        (_convlstm, [2, 1, 88, 88, 1], [1400, 1, 88, 88, 1], "ConvLSTM2D layer clstm (kernel 9, filters 4, "
         "stateful batch 1400"),
        # 2 x 16e6 x 8 states of an LSTMCell through the generic wrapper: 256 M numbers
        (_wrapped, [2, 1, 4], [16_000_000, 1, 4], "RNN layer r (stateful batch 16000000, states 16 a row"),
    ],
)  # fmt: skip
def test_a_stateful_layers_states_are_refused_before_keras_builds_them(tmp_path, monkeypatch, make, small, big, said):
    """#6 (ConvLSTM2D: states = 2 x batch x output sides x filters, by padding and strides) and #7 (RNN(LSTMCell)):
    a genuine model's batch_shape edited is refused before Keras is asked to build it (keras_zip_problem imports
    no TensorFlow; load_model is never reached), in one line whose advice fits a genuine model with a large batch
    too. Sabotage: the ConvLSTM states term, or the RNN branch, removed fails its row; the states advice left out of
    keras_sizes (or saved.py's "never like this" kept for it) fails both."""
    import keras

    from featstore.errors import ConfigError
    from featstore.models.keras_sizes import keras_zip_problem
    from featstore.models.saved import load_model_file

    genuine, crafted = _edited(tmp_path, make(small), small, big)
    assert keras_zip_problem(genuine) is None
    problem = keras_zip_problem(crafted) or "accepted"
    assert "builds at least" in problem and said in problem, problem

    def never(*args, **kwargs):
        raise AssertionError("Keras was asked to build the crafted file")

    monkeypatch.setattr(keras.saving, "load_model", never)
    with pytest.raises(ConfigError, match="is refused before loading: its config.json builds at least") as caught:
        load_model_file(crafted)
    said = str(caught.value)  # it may be a genuine model with a large batch: the advice says both
    assert "\n" not in said and "save it with a smaller batch_shape; if not, its config was edited" in said, said
    assert "A model saved by Keras is never like this" not in said, said


GUARD = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import keras
from keras import layers as L
from featstore.models.build_guard import TooLarge, bounded_build
for shape, layer in [((10**9, 1, 4), L.RNN(L.LSTMCell(8), stateful=True, name="r")),
                     ((10**6, 1, 88, 88, 1), L.ConvLSTM2D(64, 1, padding="same", stateful=True, name="clstm"))]:
    try:
        with bounded_build(0, "crafted.keras"):
            layer(keras.Input(batch_shape=shape))
        print("BUILT", layer.name)
    except TooLarge as exc:
        print("REFUSED", exc)
    except Exception as exc:
        print("OTHER", type(exc).__name__, str(exc).splitlines()[0][:200])
"""


def test_the_build_guard_counts_states_before_keras_fills_them():
    """What the formulas miss the guard catches: a stateful RNN(LSTMCell) of batch 1e9 (32 GB of states) and a
    ConvLSTM2D of batch 1e6 (2 TB) built under ``bounded_build`` in a 4 GiB process are refused in one line naming
    the states, before their zeros are made. Sabotage: ``RNN._create_state_variables`` left unwrapped fails it (the
    zeros are made first: TensorFlow's ResourceExhaustedError under the limit)."""
    done = subprocess.run([sys.executable, "-c", GUARD], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.split(" ")[0] in ("BUILT", "REFUSED", "OTHER")]
    assert len(lines) == 2, done.stdout + done.stderr[-2000:]
    for line, layer in zip(lines, ("r", "clstm"), strict=True):
        assert line.startswith("REFUSED crafted.keras is refused while Keras builds it"), line
        assert f"the states of stateful layer '{layer}" in line and "save it with a smaller batch_shape" in line, line


def test_a_variable_made_from_a_value_is_counted_once():
    """A Variable Keras makes from a value (not an initializer) is counted before it is copied; the states counted
    as zeros are not counted again when their Variable copies them. Sabotage: the value path left uncounted fails the
    first half; the zeros not credited to the Variable (counted twice) fails the second."""
    import keras
    import numpy as np

    from featstore.models.build_guard import TooLarge, bounded_build

    with pytest.raises(TooLarge, match=r"the variable 'v' \(made from a value\) took the count to 20,000,000"):
        with bounded_build(0, "m.keras"):
            keras.Variable(np.zeros((5000, 4000), "float32"), name="v")
    with bounded_build(0, "m.keras"):  # 2 x 600,000 x 8 = 9.6 M states (twice: 19.2 M, over the 16.8 M slack)
        x = keras.Input(batch_shape=(600_000, 1, 4))
        layer = keras.layers.LSTM(8, stateful=True)
        layer(x)
    assert sum(int(np.prod(s.shape)) for s in layer.states) == 9_600_000


def _stateful_models(keras):
    L, In = keras.layers, keras.Input
    seq, img, vol = In(batch_shape=(3, 2, 4)), In(batch_shape=(3, 2, 9, 7, 2)), In(batch_shape=(3, 2, 2, 5, 6))
    line, cube = In(batch_shape=(3, 2, 11, 2)), In(batch_shape=(3, 2, 5, 4, 6, 2))
    return {
        "LSTM": (seq, L.LSTM(5, stateful=True)),
        "GRU": (seq, L.GRU(5, stateful=True)),
        "SimpleRNN": (seq, L.SimpleRNN(5, stateful=True)),
        "RNN(LSTMCell)": (seq, L.RNN(L.LSTMCell(5), stateful=True)),
        "RNN(GRUCell)": (seq, L.RNN(L.GRUCell(5), stateful=True)),
        "RNN(StackedRNNCells)": (seq, L.RNN(L.StackedRNNCells([L.LSTMCell(5), L.SimpleRNNCell(3)]), stateful=True)),
        "ConvLSTM1D": (line, L.ConvLSTM1D(4, 3, strides=2, stateful=True)),
        "ConvLSTM2D": (img, L.ConvLSTM2D(4, (3, 2), strides=(2, 1), padding="same", stateful=True)),
        "ConvLSTM2D channels_first": (vol, L.ConvLSTM2D(3, 2, dilation_rate=2, data_format="channels_first",
                                                        stateful=True)),
        "ConvLSTM3D": (cube, L.ConvLSTM3D(2, 2, padding="same", stateful=True)),
    }  # fmt: skip


def test_genuine_stateful_models_are_counted_exactly_their_states_and_load(tmp_path):
    """The stateful variants of the every-layer test: for each stateful RNN kind (a batch of 3), what the formulas
    add for ``stateful`` is exactly the states Keras makes, the whole count above 0 and at most weights plus states,
    and the saved file loads. Sabotage: ConvLSTM's output sides without strides (or padding) fails its rows; a
    GRUCell counted with 2 states fails RNN(GRUCell)."""
    import keras
    import numpy as np

    from featstore.models.keras_sizes import implied_parameters, keras_zip_problem
    from featstore.models.saved import load_model_file

    bad = []
    for i, (name, (x, layer)) in enumerate(_stateful_models(keras).items()):
        model = keras.Model(x, layer(x))
        text = json.dumps(keras.saving.serialize_keras_object(model))
        states = sum(int(np.prod(s.shape)) for s in keras.tree.flatten(layer.states))
        stored = sum(int(np.prod(w.shape)) for w in model.weights)
        counted = implied_parameters(json.loads(text))[0]
        without = implied_parameters(json.loads(text.replace('"stateful": true', '"stateful": false')))[0]
        if not (counted - without == states > 0 and 0 < counted <= stored + states):
            bad.append((name, counted, without, states, stored))
        path = tmp_path / f"{i}.keras"
        model.save(path)
        assert keras_zip_problem(path) is None, name
        assert load_model_file(path).count_params() == stored, name
    assert not bad, f"(kind, counted, counted if not stateful, states built, weights built): {bad}"


def test_running_out_of_memory_while_keras_builds_is_one_line_saying_so(tmp_path, monkeypatch):
    """#6: TensorFlow's ResourceExhaustedError while Keras built a model (a genuine Keras model) was reported as
    "... is not a Keras model (ResourceExhaustedError: ...)". It is now one line saying the model asks for more
    memory than the process can have, and what to do. Sabotage: the memory branch removed fails it."""
    import keras
    import tensorflow as tf

    from featstore.errors import ConfigError
    from featstore.models.saved import load_model_file

    x = keras.Input((4,))
    keras.Model(x, keras.layers.Dense(2)(x)).save(tmp_path / "m.keras")

    def oom(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1400,88,88,64]\nx")

    monkeypatch.setattr(keras.saving, "load_model", oom)
    with pytest.raises(ConfigError) as caught:
        load_model_file(tmp_path / "m.keras")
    said = str(caught.value)
    assert "asks for more memory than this process can have" in said and "smaller batch_shape" in said, said
    assert "not a Keras model" not in said and "\n" not in said, said

"""Address space against resident memory of one image through a model of two wide convolutions: why featstore's
memory-room check (``featstore.models.traced_bound.refuse_no_room``) is a lower bound under ``ulimit -v``.

Saves a random-weight model (two 30-channel 3x3 convolutions at ``SIDE`` px, then global pooling), builds it as an
extractor in this process, and prints the traced pass's working set of one image (an operation's inputs and outputs),
then this process's address space (VmSize, VmPeak) and resident memory (VmHWM) after the build and after one image
went through, and the ratio of address space to resident memory the image added. Run::

    python benchmarks/address_space.py          # SIDE=2048: ~1 minute, ~2 GB resident on a 2-core CPU
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

SIDE = int(sys.argv[1]) if len(sys.argv) > 1 else 2048


def status() -> dict[str, int]:
    """VmSize, VmPeak and VmHWM of this process, in bytes."""
    keys = ("VmSize", "VmPeak", "VmHWM")
    return {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(keys)}


def main() -> None:
    import keras

    from featstore import ExtractorConfig
    from featstore.models.extractor import Extractor
    from featstore.units import format_bytes

    layers = keras.layers
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.keras"
        inp = keras.Input((SIDE, SIDE, 3))
        x = layers.Conv2D(30, 3, padding="same", name="c1")(inp)
        x = layers.Conv2D(30, 3, padding="same", name="c2")(x)
        keras.Model(inp, layers.GlobalAveragePooling2D(name="gap")(x)).save(path)
        ex = Extractor(ExtractorConfig(model=str(path)))
        ex.check_traced()
        built = status()
        ex(np.zeros((1, SIDE, SIDE, 3), np.uint8))
        after = status()
    need, op, kind = ex._traced.working
    print(f"one {SIDE} px image: working set {format_bytes(need)} ({kind} {op})")
    for name, s in (("built", built), ("after one image", after)):
        print(
            f"{name:>16}: VmSize {format_bytes(s['VmSize'])}, VmPeak {format_bytes(s['VmPeak'])}, VmHWM {format_bytes(s['VmHWM'])}"
        )
    added_as, added_rss = after["VmPeak"] - built["VmSize"], after["VmHWM"] - built["VmHWM"]
    print(f"the image added {format_bytes(added_as)} of address space for {format_bytes(added_rss)} resident: "
          f"{added_as / max(added_rss, 1):.1f}x; {added_as / need:.1f}x the working set")  # fmt: skip


if __name__ == "__main__":
    main()

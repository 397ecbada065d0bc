"""Peak memory of decoding one large 16-bit image, against the size of the full-size float64 copy it avoids.

Writes a 9400x9400 16-bit grayscale PNG (small on disk: a smooth gradient), decodes it with featstore's
``load_image`` to 150x150 in a fresh process, and prints that process's peak RSS above its baseline, beside the
bytes of one full-size float64 copy of the image (what the decoder once made, 707 MB for this image) and the
ratio. Run::

    python benchmarks/decode_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 9400
CODE = """
import json, sys
from featstore.images.listing import load_image
def hwm():  # this process's peak RSS in MB (VmHWM: per address space, so not inherited from the parent across exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
base = hwm()
img = load_image(sys.argv[1], 150)
print(json.dumps({"base_mb": base, "peak_mb": hwm(), "shape": list(img.shape)}))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big16.png"
        grad = (np.linspace(0, 65535, SIDE, dtype=np.float64)[None, :] * np.ones((SIDE, 1))).astype(np.uint16)
        Image.fromarray(grad).save(path)
        del grad
        res = subprocess.run([sys.executable, "-c", CODE, str(path)], capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        size_mb = path.stat().st_size / 1e6
    float64_mb = SIDE * SIDE * 8 / 1e6
    grew = m["peak_mb"] - m["base_mb"]
    print(
        f"{SIDE}x{SIDE} 16-bit PNG ({size_mb:.1f} MB on disk) decoded to {tuple(m['shape'])}: peak RSS grew {grew:.0f} MB "
        f"(process baseline {m['base_mb']:.0f} MB); one full-size float64 copy is {float64_mb:.0f} MB; ratio {grew / float64_mb:.2f}"
    )


if __name__ == "__main__":
    main()

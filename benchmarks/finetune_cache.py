"""Fine-tuning from the cached cut against fine-tuning from the images: seconds per epoch (issue 11, item 2).

Phase B with ``--unfreeze-from block5_conv1`` on VGG16@150 trains only block 5 and the head; everything below is
frozen. Without augmentation featstore computes the frozen layers once into the store (group ``vgg16@block4_pool``)
and trains block 5 on them; ``--no-cache`` decodes the images and runs the whole network every epoch. Both train the
same model on the same batches (tests/test_finetune.py checks they end with the same weights).

On --n generated photo-sized JPEGs (500x375; --n // 4 more for validation), random VGG16 weights (speed does not depend
on the weights), batch 20, --epochs epochs, interleaved over --repeats rounds. Printed: the median seconds per epoch
of each path (epochs after the first, which also traces the graph), their ratio, and the one-time cost of caching
the cut (an extraction of train and validation up to block4_pool), also as epochs of the image path it is worth.

    python benchmarks/finetune_cache.py --n 200 --epochs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import featstore  # noqa: E402

featstore.quiet_tensorflow()  # TensorFlow's start-up lines hidden, as the featstore command does
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_throughput import make_images  # noqa: E402  (the same photo-like JPEGs as the throughput benchmark)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="training images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--unfreeze-from", default="block5_conv1")
    args = ap.parse_args()
    from featstore import ExtractorConfig, extract, fit
    from featstore.experiments.finetune import FinetuneConfig, finetune

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_val = max(args.n // 4, 2)
        data = make_images(tmp / "imgs", args.n + n_val)
        for p in [p for p in (data / "train").glob("*/*.jpg") if int(p.stem[3:]) >= args.n]:  # img<i>.jpg, class i % 2
            (data / "validation" / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.move(p, data / "validation" / p.parent.name / p.name)
        store = tmp / "f.h5"
        cfg = ExtractorConfig(model="vgg16", image_size=150, weights="none", seed=0)
        for split in ("train", "validation"):
            extract(data, split, store, cfg)
        head = fit(store, "dense", {"epochs": [2]})["id"]
        per_epoch: dict[str, list[float]] = {"from the images (--no-cache)": [], "from the cached cut": []}
        cache_s = []
        for r in range(args.repeats):
            for key, cache in (("from the images (--no-cache)", False), ("from the cached cut", True)):
                if cache and r > 0:  # measure the one-time caching again: drop the cached group
                    import h5py

                    with h5py.File(store, "a") as f:
                        del f[f"vgg16@{_below(args.unfreeze_from)}"]
                conf = FinetuneConfig(args.unfreeze_from, epochs=args.epochs, patience=args.epochs, cache=cache)
                rec = finetune(head, conf, store=store)
                per_epoch[key].append(rec["seconds_per_epoch"])
                if cache:
                    cache_s.append(rec["cache_seconds"])
        images, cached = (statistics.median(v) for v in per_epoch.values())
        print(
            f"VGG16@150, --unfreeze-from {args.unfreeze_from}, {args.n} training + {n_val} validation images, batch 20, "
            f"{args.epochs} epochs x {args.repeats} rounds (medians; epochs after the first)"
        )
        for key, v in per_epoch.items():
            print(f"  {key:30s} {statistics.median(v):8.2f} s per epoch   (rounds: {', '.join(f'{x:.2f}' for x in v)})")
        print(f"  speed-up of the cached cut: {images / cached:.1f}x per epoch")
        print(
            f"  one-time caching of the cut: {statistics.median(cache_s):.1f} s = {statistics.median(cache_s) / images:.2f} "
            f"epochs from the images"
        )


def _below(layer: str) -> str:
    """The VGG16 layer whose output feeds ``layer`` (the cached group's cut)."""
    block, conv = layer.split("_")
    return f"block{int(block[5:]) - 1}_pool" if conv == "conv1" else f"{block}_conv{int(conv[4:]) - 1}"


if __name__ == "__main__":
    main()

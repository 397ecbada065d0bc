"""The forward pass's runtimes side by side in one run: Keras (TensorFlow) against ONNX Runtime (``--runtime onnx``).

For each backbone (random weights: they do not change speed), on the same images and batch size, it prints:

1. model-only images/s (images already decoded and resized in memory; preprocessing and the forward pass) under each
   runtime, and their ratio;
2. whole-``extract`` images/s (decode, model, write; model building, export and the start-up check excluded) under
   each runtime, and their ratio; the issue's targets: onnx/keras >= 1.8 for mobilenet_v2@128, >= 1.15 at 224 px;
3. the export time (export, load and the start-up check against Keras; once per store, then cached);
4. where ``openvino`` is importable (it is not a featstore runtime: this column measures whether it should become one),
   model-only images/s of OpenVINO's CPU plugin running the same exported ONNX file, compiled for the batch size
   (static shape) in float32 (``--openvino-precision``), with its ratio to ONNX Runtime and its largest difference to
   Keras (absolute, and as a fraction of the largest feature: featstore's tolerance is 1e-4); skipped with a note
   otherwise.

Rounds are interleaved (keras, onnx, keras, onnx, ...) so that the machine's noise hits both alike; each figure is
the median of ``--repeats``. ``--sweep-threads`` also prints whole-extract images/s of the first backbone for ONNX
Runtime intra-op threads x decode threads (how the defaults were chosen).

    python benchmarks/runtimes.py                                    # mobilenet_v2@128 resnet50@224 vgg16@150
    python benchmarks/runtimes.py --models mobilenet_v2@128 --repeats 5 --sweep-threads
    python benchmarks/runtimes.py --models mobilenet_v2@128 resnet50@224 --repeats 5 --model-only   # + OpenVINO
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_MODELS = ("mobilenet_v2@128", "resnet50@224", "vgg16@150")


def model_only(ex, imgs: np.ndarray, batch: int) -> float:
    """img/s of preprocessing + forward pass on pre-decoded images."""
    t = time.perf_counter()
    for i in range(0, len(imgs), batch):
        ex(imgs[i : i + batch])
    return len(imgs) / (time.perf_counter() - t)


def openvino_forward(path: Path, batch: int, size: int, channels: int, precision: str = "f32"):
    """OpenVINO's CPU plugin on the exported ONNX file, compiled for ``batch`` images, one thread per core (as ONNX
    Runtime gets), computing in ``precision`` (``f32`` as featstore's runtimes; ``default``: the plugin's own choice,
    bf16 on CPUs with AMX or AVX-512 BF16); ``(forward, what)``, or ``(None, why)`` when openvino is not importable."""
    try:
        import openvino as ov
    except ImportError as exc:
        return None, f"openvino is not importable here ({exc}); pip install openvino to add its column"
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([batch, size, size, channels])
    config = {"INFERENCE_NUM_THREADS": os.cpu_count() or 1}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def forward(x: np.ndarray) -> np.ndarray:
        return request.infer([np.ascontiguousarray(x, np.float32)])[0].copy()

    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return forward, f"openvino {ov.__version__}, computing in {used}"


def whole_extract(data: Path, split: str, store: Path, config, batch: int, decode_threads: int | None = None) -> float:
    """img/s of featstore's extraction loop (setup excluded), the split written again into ``store`` (its cache kept)."""
    from featstore import extract

    r = extract(data, split, store, config, batch_size=batch, overwrite=True, decode_threads=decode_threads)
    return r.images_per_second


def bench(
    spec: str,
    data: Path,
    split: str,
    batch: int,
    repeats: int,
    n_model: int,
    tmp: Path,
    model_only_: bool = False,
    ov_precision: str = "f32",
) -> dict:
    """Both runtimes on one backbone ``name@size``: medians of model-only and whole-extract img/s, the export time; and
    OpenVINO's model-only img/s where it is importable. ``model_only_``: leave out the whole-extract runs."""
    from featstore import Extractor, ExtractorConfig, load_image
    from featstore.models import agreement, onnx_runtime

    name, size = spec.split("@")
    keras_cfg = ExtractorConfig(model=name, image_size=int(size), weights="none")
    onnx_cfg = ExtractorConfig(model=name, image_size=int(size), weights="none", runtime="onnx")
    files = sorted((data / split).glob("*/*"))[:n_model]
    imgs = np.stack([load_image(p, int(size)) for p in files])
    store = tmp / f"{name}_{size}.h5"
    keras_ex = Extractor(keras_cfg)
    t = time.perf_counter()
    exported, diff = onnx_runtime.start(keras_ex, Path(f"{store}.cache") / onnx_runtime.CACHE_FOLDER)
    export_s = time.perf_counter() - t
    onnx_ex = Extractor(onnx_cfg, runtime_cache=Path(f"{store}.cache") / onnx_runtime.CACHE_FOLDER)  # the cached file
    ov, ov_note = openvino_forward(exported.path, batch, int(size), keras_ex.spec.channels_in, ov_precision)
    runtimes = [("keras", keras_ex, keras_cfg), ("onnx", onnx_ex, onnx_cfg)]
    r = {"export_s": export_s, "max_abs_diff": diff, "openvino": ov_note}
    if ov is not None:
        runtimes.append(("openvino", lambda b: ov(keras_ex._prepare(b)), None))
        x = keras_ex._prepare(agreement.seeded_images(batch, int(size)))
        worst, scale = agreement.largest_difference(ov(x), keras_ex._forward(x))
        r["openvino_max_abs_diff"], r["openvino_relative_diff"] = worst, worst / max(scale, 1e-30)
    for _, ex, _ in runtimes:
        ex(imgs[:batch])  # warm-up
    runs = {name: ([], []) for name, _, _ in runtimes}
    for _ in range(repeats):
        for runtime, ex, cfg in runtimes:
            runs[runtime][0].append(model_only(ex, imgs, batch))
            if cfg is not None and not model_only_:
                runs[runtime][1].append(whole_extract(data, split, store, cfg, batch))
    for runtime, (mo, ex) in runs.items():
        r[f"{runtime}_model_img_s"], r[f"{runtime}_model_rounds"] = statistics.median(mo), mo
        if ex:
            r[f"{runtime}_extract_img_s"], r[f"{runtime}_extract_rounds"] = statistics.median(ex), ex
    r["model_ratio"] = r["onnx_model_img_s"] / r["keras_model_img_s"]
    if not model_only_:
        r["extract_ratio"] = r["onnx_extract_img_s"] / r["keras_extract_img_s"]
    if ov is not None:
        r["openvino_onnx_ratio"] = r["openvino_model_img_s"] / r["onnx_model_img_s"]
    return r


def sweep_threads(spec: str, data: Path, split: str, batch: int, repeats: int, tmp: Path) -> dict:
    """Whole-extract img/s under ONNX Runtime for intra-op threads x decode threads: each round runs every setting once
    (interleaved, so the machine's noise hits them alike); medians of ``repeats`` rounds."""
    from featstore import ExtractorConfig
    from featstore.models import onnx_runtime

    name, size = spec.split("@")
    cfg = ExtractorConfig(model=name, image_size=int(size), weights="none", runtime="onnx")
    cores = os.cpu_count() or 1
    store = tmp / f"{name}_{size}.h5"  # its cache holds the export made by bench()
    settings = [(t, d) for t in sorted({1, cores}) for d in sorted({1, cores, 2 * cores})]
    rates: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    for _ in range(repeats):
        for threads, decode in settings:
            os.environ[onnx_runtime.THREADS_ENV] = str(threads)
            rates[(threads, decode)].append(whole_extract(data, split, store, cfg, batch, decode))
    os.environ.pop(onnx_runtime.THREADS_ENV, None)
    return {f"onnx threads {t}, decode threads {d}": statistics.median(r) for (t, d), r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="name@size, e.g. mobilenet_v2@128")
    ap.add_argument("--data", type=Path, default=Path("data/fashion_mnist"), help="a data root (default: the sample)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-model", type=int, default=128, help="images of the model-only runs")
    ap.add_argument("--sweep-threads", action="store_true", help="also sweep threads on the first backbone")
    ap.add_argument("--model-only", action="store_true", help="leave out the whole-extract runs")
    ap.add_argument("--openvino-precision", default="f32", help="f32 (default), bf16, or default (the plugin's choice)")
    args = ap.parse_args()
    from featstore import quiet_tensorflow

    quiet_tensorflow()
    n = len(list((args.data / args.split).glob("*/*")))
    print(f"{n} images of {args.data}/{args.split}, batch {args.batch_size}, {os.cpu_count()} cores, median of "
          f"{args.repeats} interleaved rounds; random weights")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            r = results[spec] = bench(
                spec,
                args.data,
                args.split,
                args.batch_size,
                args.repeats,
                args.n_model,
                Path(tmp),
                args.model_only,
                args.openvino_precision,
            )
            line = (
                f"{spec:18s} model only: keras {r['keras_model_img_s']:7.1f}  onnx {r['onnx_model_img_s']:7.1f} img/s "
                f"= {r['model_ratio']:.2f}x"
            )
            if "openvino_model_img_s" in r:
                line += (
                    f"  openvino {r['openvino_model_img_s']:7.1f} img/s = {r['openvino_onnx_ratio']:.2f}x onnx "
                    f"(max abs diff {r['openvino_max_abs_diff']:.2g}, {r['openvino_relative_diff']:.2g} of the largest "
                    f"feature)"
                )
            if not args.model_only:
                line += (
                    f" | extract: keras {r['keras_extract_img_s']:7.1f}  onnx {r['onnx_extract_img_s']:7.1f} img/s = "
                    f"{r['extract_ratio']:.2f}x"
                )
            print(f"{line} | export+check {r['export_s']:.1f} s, max abs diff {r['max_abs_diff']:.2g}")
        if "openvino_model_img_s" not in results.get(args.models[0], {}):
            print(f"OpenVINO column skipped: {results[args.models[0]]['openvino']}")
        else:
            print(f"OpenVINO column: {results[args.models[0]]['openvino']}, compiled for batches of {args.batch_size}")
        if args.sweep_threads:
            grid = results["threads"] = sweep_threads(
                args.models[0], args.data, args.split, args.batch_size, args.repeats, Path(tmp)
            )
            for setting, rate in grid.items():
                print(f"  {args.models[0]} extract, {setting}: {rate:.1f} img/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

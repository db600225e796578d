"""The bench-baselines command: image-tower throughput of Python onnxruntime and transformers/PyTorch
(and ONNX Runtime's MatMul ceiling) for the Rust benchmark, as JSON lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .common import LOCAL, die, ort_session


def vision_flops(model_dir: Path):
    """Multiply-add FLOPs of one image through a ViT image tower (matrix products only), and the
    shape of its largest product (tokens, width, MLP width), from config.json."""
    v = json.loads((model_dir / "config.json").read_text()).get("vision_config", {})
    d, m, layers = v.get("hidden_size", 768), v.get("intermediate_size", 3072), v.get("num_hidden_layers", 12)
    size, patch = v.get("image_size", 224), v.get("patch_size", 32)
    grid = (size // patch) ** 2
    t = grid + 1
    per_layer = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * m + 2 * 2 * t * t * d
    flops = layers * per_layer + 2 * grid * 3 * patch * patch * d + 2 * d * v.get("projection_dim", 512)
    return flops, t, d, m


def matmul_ceiling(model_dir: Path, args, emit):
    """ONNX Runtime's MatMul throughput on this machine, on the tower's largest product at this
    batch, turned into an upper bound of images/s: what no fp32 session of this model can beat."""
    import numpy as np
    import onnxruntime as ort
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # onnx is not in the light venv
        emit({"baseline": "matmul-ceiling", "batch": args.batch, "threads": args.threads,
              "images_per_s": None, "skipped": f"onnx not available ({type(e).__name__})"})
        return
    flops, t, d, m = vision_flops(model_dir)
    rows = args.batch * t
    w = numpy_helper.from_array(np.random.default_rng(0).random((d, m), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, m])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((rows, d), dtype=np.float32)
    for _ in range(10):
        sess.run(None, {"x": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(args.seconds, 5.0):
        sess.run(None, {"x": x})
        n += 1
    gflops = 2 * rows * d * m * n / (time.perf_counter() - t0) / 1e9
    emit({"baseline": "matmul-ceiling", "batch": args.batch, "threads": args.threads,
          "images_per_s": round(gflops * 1e9 / flops, 3), "matmul_gflops": round(gflops, 1),
          "matmul_shape": [rows, d, m], "gflop_per_image": round(flops / 1e9, 3),
          "onnxruntime": ort.__version__})


def cmd_bench_baselines(args):
    import numpy as np
    model_dir = Path(args.model).resolve()
    onnx_file = model_dir / "onnx" / {"fp32": "vision_model.onnx", "quantized": "vision_model_quantized.onnx",
                                      "fp16": "vision_model_fp16.onnx"}[args.variant]
    if not onnx_file.exists():
        die(f"{onnx_file} not found")
    results = []

    def emit(rec):
        results.append(rec)
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            ips = rec.get("images_per_s")
            print(f"{rec['baseline']:22} batch {rec['batch']:3} threads {rec['threads']:2} "
                  f"{'skipped: ' + rec['skipped'] if ips is None else f'{ips:8.2f} images/s'}", flush=True)

    import onnxruntime as ort
    if "matmul-ceiling" in args.only:
        matmul_ceiling(model_dir, args, emit)
        if args.only == ["matmul-ceiling"]:
            return
    # The input the image processor produces (what the tower was exported for).
    pp = json.loads((model_dir / "preprocessor_config.json").read_text())
    c = pp.get("crop_size", 224)
    size = c if isinstance(c, int) else c["height"]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)

    def run_timed(step):
        for _ in range(args.warmup):
            step()
        n, t0 = 0, time.perf_counter()
        while True:
            step()
            n += 1
            el = time.perf_counter() - t0
            if el >= args.seconds:
                return n, el

    if "onnxruntime-python" in args.only:
        sess = ort_session(onnx_file, args.threads)
        n, el = run_timed(lambda: sess.run(None, {"pixel_values": x}))
        emit({"baseline": "onnxruntime-python", "batch": args.batch, "threads": args.threads,
              "images_per_s": round(n * args.batch / el, 3), "runs": n, "seconds": round(el, 3),
              "variant": args.variant, "onnxruntime": ort.__version__})
        del sess
    if "transformers-pytorch" in args.only:
        try:
            import torch
            from transformers import CLIPConfig, CLIPModel
        except Exception as e:  # torch is not in the light venv
            emit({"baseline": "transformers-pytorch", "batch": args.batch, "threads": args.threads,
                  "images_per_s": None, "skipped": f"torch not available ({type(e).__name__})"})
            return
        cfgp = model_dir / "config.json"
        try:
            cfg = CLIPConfig.from_pretrained(str(model_dir))
        except Exception as e:
            emit({"baseline": "transformers-pytorch", "batch": args.batch, "threads": args.threads,
                  "images_per_s": None, "skipped": f"no usable transformers config.json in {cfgp} ({e})"})
            return
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = CLIPModel(cfg).eval()  # random weights: same FLOPs as the checkpoint
        xt = torch.from_numpy(x)

        def step():
            with torch.inference_mode():
                model.get_image_features(pixel_values=xt)
        n, el = run_timed(step)
        emit({"baseline": "transformers-pytorch", "batch": args.batch, "threads": args.threads,
              "images_per_s": round(n * args.batch / el, 3), "runs": n, "seconds": round(el, 3),
              "torch": torch.__version__.split("+")[0]})


def register(sub):
    """Add bench-baselines to the subcommand parsers `sub`."""
    p = sub.add_parser("bench-baselines", help="images/s of Python onnxruntime and transformers/PyTorch",
                       description="Image-tower throughput baselines for the Rust benchmark. With --json, stdout "
                                   "has only JSON lines: {\"baseline\":\"onnxruntime-python\"|\"transformers-"
                                   "pytorch\",\"batch\":N,\"threads\":T,\"images_per_s\":X|null,...}.")
    p.add_argument("--model", default=str(LOCAL / "models" / "clip-vit-base-patch32-random"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per baseline (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--variant", choices=["fp32", "quantized", "fp16"], default="fp32",
                   help="which vision_model*.onnx the onnxruntime baseline runs")
    p.add_argument("--only", nargs="+", default=["onnxruntime-python", "transformers-pytorch"],
                   choices=["onnxruntime-python", "transformers-pytorch", "matmul-ceiling"],
                   help="which baselines (matmul-ceiling: ONNX Runtime's MatMul peak on the tower's largest "
                        "product, as an upper bound of fp32 images/s)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (logs go to stderr)")
    p.set_defaults(fn=cmd_bench_baselines)

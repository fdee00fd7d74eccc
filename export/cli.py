"""`desta-edge export onnx|tensorrt|trtllm`: export directories for the faster backends.

`onnx` writes the ONNX export `--backend onnx` runs; `tensorrt` builds a TensorRT engine from its
encoder graph; `trtllm` builds a TensorRT-LLM engine of the LLM (the last two need NVIDIA's
libraries and a GPU, and have not yet been run on hardware).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EXIT_BAD_INPUT = 2


def register_cli(sub) -> None:
    p = sub.add_parser("export", help="export the model for a faster backend")
    targets = p.add_subparsers(dest="target", required=True)
    onnx = targets.add_parser("onnx", help="encoder+connector, Whisper decoder and LLM as ONNX graphs")
    onnx.add_argument("--model", default="tiny", help="preset, checkpoint directory or hub id (default: tiny)")
    onnx.add_argument("--out", required=True, help="export directory (replaced if it exists)")
    onnx.add_argument("--quantize", choices=("int8", "int4"), default=None,
                      help="int8 (dynamic; feed-forward output and vocabulary projections stay fp32) or int4 "
                           "(block-wise MatMulNBits) weights for CPU; measured accuracy cost in the README")
    onnx.add_argument("--quantize-graphs", default="encoder,decoder,llm",
                      help="comma-separated graphs --quantize applies to (default: encoder,decoder,llm); "
                           "'llm' keeps the speech graphs, and so the transcripts, exactly fp32")
    onnx.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    onnx.set_defaults(func=_cmd_onnx)

    trt = targets.add_parser("tensorrt", help="TensorRT engine of the encoder+connector graph (not yet run on hardware)")
    trt.add_argument("--onnx", required=True, help="an ONNX export directory (desta-edge export onnx)")
    trt.add_argument("--out", required=True, help="engine directory (replaced if it exists), e.g. ONNX_DIR/tensorrt")
    trt.add_argument("--max-batch", type=int, default=4, help="largest batch of clips the engine accepts (default: 4)")
    precision = trt.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="fp16", action="store_true", default=True,
                           help="fp16, normalization layers kept in fp32 (default)")
    precision.add_argument("--fp32", dest="fp16", action="store_false", help="everything in fp32")
    trt.add_argument("--timing-cache", default=None, help="TensorRT timing cache file: read if present, written after")
    trt.add_argument("--workspace-gb", type=float, default=None,
                     help="builder workspace limit in GiB (default: TensorRT's)")
    trt.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    trt.set_defaults(func=_cmd_tensorrt)

    llm = targets.add_parser("trtllm", help="TensorRT-LLM engine of the LLM (not yet run on hardware)")
    llm.add_argument("--model", default="tiny", help="preset, checkpoint directory or hub id (default: tiny)")
    llm.add_argument("--out", required=True, help="output directory (replaced if it exists), e.g. ONNX_DIR/trtllm")
    llm.add_argument("--max-batch", type=int, default=1, help="conversations per call, one clip each (default: 1)")
    llm.add_argument("--max-input-len", type=int, default=1024, help="longest prompt in tokens (default: 1024)")
    llm.add_argument("--max-output-len", type=int, default=512, help="most answer tokens (default: 512)")
    llm.add_argument("--quantize", choices=("none", "fp8", "int4_awq"), default="none",
                     help="fp8 (Hopper/Ada) or int4_awq (W4A16, Jetson); calibrates on --calib-dataset")
    llm.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16", help="activation dtype")
    llm.add_argument("--calib-dataset", default="cnn_dailymail",
                     help="calibration data for --quantize: a Hugging Face dataset name or local path")
    llm.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    llm.set_defaults(func=_cmd_trtllm)


def _run(build, args: argparse.Namespace, summary) -> int:
    """Shared error handling and output: 2 for bad input, 1 for a missing library or failed build."""
    t0 = time.perf_counter()
    try:
        manifest = build()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(manifest) if args.json else summary(manifest))
    return 0


def _cmd_onnx(args: argparse.Namespace) -> int:
    from desta_edge import DestaModel

    from .onnx import export_onnx

    def build() -> dict:
        model = DestaModel.from_pretrained(args.model, device="cpu", progress=not args.json)
        graphs = tuple(g.strip() for g in args.quantize_graphs.split(",") if g.strip())
        return export_onnx(model, args.model, args.out, quantize=args.quantize, quantize_graphs=graphs)

    return _run(build, args,
                lambda m: f"wrote {args.out} in {m['seconds']} s; max |ONNX - PyTorch|: {m['parity_max_abs']}")


def _cmd_tensorrt(args: argparse.Namespace) -> int:
    from .tensorrt import build_engine

    return _run(
        lambda: build_engine(args.onnx, args.out, max_batch=args.max_batch, fp16=args.fp16,
                             timing_cache=args.timing_cache, workspace_gb=args.workspace_gb),
        args,
        lambda m: f"wrote {args.out} in {m['seconds']} s: TensorRT {m['tensorrt_version']}, {m['precision']}, "
                  f"batch 1..{m['max_batch']}, {len(m['fp32_layers'])} layers kept in fp32",
    )


def _cmd_trtllm(args: argparse.Namespace) -> int:
    from .trtllm import export_trtllm

    return _run(
        lambda: export_trtllm(args.model, args.out, max_batch=args.max_batch, max_input_len=args.max_input_len,
                              max_output_len=args.max_output_len, quantize=args.quantize, dtype=args.dtype,
                              calib_dataset=args.calib_dataset, progress=not args.json),
        args,
        lambda m: f"wrote {args.out} in {m['seconds']} s: TensorRT-LLM {m['tensorrt_llm_version']}, {m['dtype']}, "
                  f"quantization {m['quantization']}, prompt table {m['max_prompt_embedding_table_size']} rows",
    )

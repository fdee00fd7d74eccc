"""`desta-edge export onnx`: write an ONNX export directory for `--backend onnx`."""

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
    onnx.add_argument("--quantize", choices=("int8",), default=None, help="int8 weights (CPU; measured accuracy cost)")
    onnx.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    onnx.set_defaults(func=_cmd_onnx)


def _cmd_onnx(args: argparse.Namespace) -> int:
    from desta_edge import DestaModel

    from .onnx import export_onnx

    t0 = time.perf_counter()
    try:
        model = DestaModel.from_pretrained(args.model, device="cpu", progress=not args.json)
        manifest = export_onnx(model, args.model, args.out, quantize=args.quantize)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(manifest))
    else:
        print(f"wrote {args.out} in {manifest['seconds']} s; max |ONNX - PyTorch|: {manifest['parity_max_abs']}")
    return 0

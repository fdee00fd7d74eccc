"""TensorRT engine for the encoder + connector graph (`encoder.onnx` of an ONNX export).

NOT YET RUN ON HARDWARE: written to the TensorRT 10 Python API (`trt.Builder`, `OnnxParser`,
`BuilderConfig`, an optimization profile, `build_serialized_network`) and tested up to the
library boundary with a recording stand-in for the `tensorrt` module.

    desta-edge export tensorrt --onnx EXPORT --out EXPORT/tensorrt [--max-batch 4] [--fp16|--fp32]

writes `encoder.engine` and `tensorrt_engine.json` (TensorRT version, profile, precision, the
layers kept in fp32, the input/output names and shapes copied from the ONNX graph). An engine
is tied to the GPU model and TensorRT version it was built with; build it on the target
(Jetson: on the device, with JetPack's TensorRT).

Design choices:
- One optimization profile over the batch dimension of the log-mel input `[B, mels, 3000]`;
  opt = 1 because a spoken-query assistant encodes one utterance at a time. The frames are
  pinned to 3000 (Whisper's 30 s window; the shorter window of `set_encoder_padding` is for
  ONNX Runtime and PyTorch, and costs accuracy with the shipped adapter, see the README).
- fp16 with the normalization layers pinned to fp32 (per-layer precision, fp32 outputs, and
  `OBEY_PRECISION_CONSTRAINTS` so TensorRT may not override it): Whisper's residual stream
  exceeds the fp16 range inside LayerNorm's variance. The export keeps LayerNorm as one fused
  `LayerNormalization` op (TensorRT's normalization layer); a graph that spells it out as
  ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div is recognised too and its nodes are pinned.
- A timing cache (`--timing-cache`) is loaded before and saved after the build: rebuilding with
  the same cache skips most kernel timing.
Everything that does not need TensorRT is a plain function (`profile_shapes`, `fp32_node_names`,
`keep_fp32`, `engine_manifest`) and is tested on a real export.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

from desta_edge.runtime.audio import N_FRAMES
from desta_edge.runtime.onnx_backend import ENCODER_FILE as ONNX_ENCODER
from desta_edge.runtime.onnx_backend import MANIFEST as ONNX_MANIFEST
from desta_edge.runtime.trtllm_backend import ENGINE_FILE, ENGINE_FORMAT_VERSION, ENGINE_MANIFEST, tensorrt_module

from .staging import staged_dir

logger = logging.getLogger(__name__)

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


# ---------------------------------------------------------------------- pure pieces


def _dims(value_info) -> list[int | str]:
    """An ONNX tensor's shape: ints for fixed dims, the symbolic name (or "?") for dynamic ones."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def graph_signature(model) -> dict[str, list[dict]]:
    """Inputs and outputs of an ONNX model: name, shape (symbolic dims as names) and element type."""
    import onnx

    def entry(v) -> dict:
        dtype = onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
        return {"name": v.name, "shape": _dims(v), "dtype": dtype}

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": [entry(v) for v in model.graph.input if v.name not in inits],
            "outputs": [entry(v) for v in model.graph.output]}


def profile_shapes(model, max_batch: int, opt_batch: int = 1) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes of every graph input: the batch (dim 0) spans 1..max_batch, the rest is fixed.

    The log-mel frames (the dynamic axis "frames" of newer exports) are pinned to the full 30 s
    window: the engine serves the reference window only. Any other dynamic dimension is an
    error: guessing a range for one would build a wrong engine silently.
    """
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
    out: dict[str, dict[str, list[int]]] = {}
    for inp in graph_signature(model)["inputs"]:
        shape = inp["shape"]
        fixed = [N_FRAMES if d == "frames" else d for d in shape[1:]]
        bad = [i + 1 for i, d in enumerate(fixed) if not isinstance(d, int) or d <= 0]
        if not shape or bad:
            raise ValueError(f"input {inp['name']!r} {shape}: only the batch dimension (0) may be dynamic")
        if isinstance(shape[0], int):
            raise ValueError(f"input {inp['name']!r} has a fixed batch of {shape[0]}; export with a dynamic batch")
        out[inp["name"]] = {"min": [1, *fixed], "opt": [opt_batch, *fixed], "max": [max_batch, *fixed]}
    return out


def fp32_node_names(model) -> list[str]:
    """ONNX nodes that must stay fp32: every LayerNormalization, and decomposed LayerNorms
    (ReduceMean -> Sub -> Pow|Mul -> ReduceMean -> Add -> Sqrt -> Div), all seven nodes."""
    nodes = list(model.graph.node)
    consumers: dict[str, list] = defaultdict(list)
    for n in nodes:
        for name in n.input:
            consumers[name].append(n)

    def nxt(node, op: str) -> list:
        return [c for c in consumers[node.output[0]] if c.op_type == op]

    keep = {n.name for n in nodes if n.op_type == "LayerNormalization"}
    for mean in (n for n in nodes if n.op_type == "ReduceMean"):
        x = mean.input[0]
        for sub in nxt(mean, "Sub"):
            if list(sub.input) != [x, mean.output[0]]:
                continue
            d = sub.output[0]
            squares = nxt(sub, "Pow") + [m for m in nxt(sub, "Mul") if list(m.input) == [d, d]]
            for sq in squares:
                for var in nxt(sq, "ReduceMean"):
                    for add in nxt(var, "Add"):
                        for sqrt in nxt(add, "Sqrt"):
                            for div in nxt(sqrt, "Div"):
                                if list(div.input) == [d, sqrt.output[0]]:
                                    keep.update(n.name for n in (mean, sub, sq, var, add, sqrt, div))
    return sorted(keep)


def keep_fp32(layer_name: str, layer_metadata: str, is_normalization: bool, fp32_nodes: set[str]) -> bool:
    """Whether a TensorRT layer must run in fp32: a normalization layer, or one the ONNX parser
    made from a pinned node (the parser names layers after their node and, in TensorRT 10, puts
    `[ONNX Layer: NODE]` in the layer's metadata)."""
    if is_normalization or layer_name in fp32_nodes:
        return True
    return any(name in fp32_nodes for name in _ONNX_LAYER.findall(layer_metadata or ""))


def engine_manifest(model, *, onnx_dir: str | os.PathLike, max_batch: int, opt_batch: int, fp16: bool,
                    fp32_layers: list[str], tensorrt_version: str, workspace_gb: float | None) -> dict:
    """What the runtime needs to know about an engine, and what it was built from."""
    onnx_manifest = json.loads((Path(onnx_dir) / ONNX_MANIFEST).read_text())
    return {
        "format_version": ENGINE_FORMAT_VERSION,
        "engine": ENGINE_FILE,
        "source_onnx": str((Path(onnx_dir) / ONNX_ENCODER).resolve()),
        "tensorrt_version": tensorrt_version,
        "precision": "fp16" if fp16 else "fp32",
        "fp32_layers": fp32_layers,
        "max_batch": max_batch,
        "profile": profile_shapes(model, max_batch, opt_batch),
        "workspace_gb": workspace_gb,
        "has_connector": onnx_manifest.get("has_connector"),
        "n_mels": onnx_manifest.get("n_mels"),
        **graph_signature(model),
    }


def check_onnx_export(onnx_dir: str | os.PathLike) -> Path:
    """The encoder graph of an ONNX export directory, or a FileNotFoundError that says how to make one."""
    d = Path(onnx_dir)
    if not (d / ONNX_MANIFEST).is_file() or not (d / ONNX_ENCODER).is_file():
        raise FileNotFoundError(
            f"{d}: not an ONNX export directory (no {ONNX_MANIFEST} / {ONNX_ENCODER}); "
            f"create one with `desta-edge export onnx --model NAME --out {d}`"
        )
    return d / ONNX_ENCODER


# ---------------------------------------------------------------------- the build (needs TensorRT)


def build_engine(onnx_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_batch: int = 4, opt_batch: int = 1,
                 fp16: bool = True, timing_cache: str | os.PathLike | None = None,
                 workspace_gb: float | None = None) -> dict:
    """Build `encoder.engine` from `onnx_dir/encoder.onnx` into `out_dir` (replaced); returns the manifest."""
    import onnx

    encoder = check_onnx_export(onnx_dir)
    model = onnx.load(str(encoder), load_external_data=False)  # structure only; TensorRT reads the weights
    profile = profile_shapes(model, max_batch, opt_batch)  # validate before touching TensorRT
    pinned = set(fp32_node_names(model)) if fp16 else set()
    trt = tensorrt_module()

    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated and ignored); 8.x needs it
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(encoder)):  # from the file, so external weight files resolve
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {encoder}: {errors}")

    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for name, s in profile.items():
        opt_profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(opt_profile)

    fp32_layers: list[str] = []
    if fp16:
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast fp16; the fp16 engine may be slower than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            is_norm = layer.type == trt.LayerType.NORMALIZATION
            if not keep_fp32(layer.name, getattr(layer, "metadata", ""), is_norm, pinned):
                continue
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            if is_norm and hasattr(trt, "INormalizationLayer"):
                layer.__class__ = trt.INormalizationLayer  # get_layer returns the base ILayer; cast to reach:
                layer.compute_precision = trt.float32  # the normalization's own accumulation type
            fp32_layers.append(layer.name)
        if pinned and not fp32_layers:
            raise RuntimeError("no TensorRT layer matched the ONNX normalization nodes; refusing an all-fp16 encoder")

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    logger.info("building the TensorRT engine (%s, batch 1..%d); this takes minutes", "fp16" if fp16 else "fp32", max_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    manifest = engine_manifest(model, onnx_dir=onnx_dir, max_batch=max_batch, opt_batch=opt_batch, fp16=fp16,
                               fp32_layers=fp32_layers, tensorrt_version=str(trt.__version__), workspace_gb=workspace_gb)
    with staged_dir(out_dir) as tmp:
        (tmp / ENGINE_FILE).write_bytes(bytes(memoryview(serialized)))
        (tmp / ENGINE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

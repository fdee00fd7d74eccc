"""ONNX export: a self-contained directory that `DestaModel.from_pretrained(DIR, backend="onnx")` runs.

Three graphs, traced at opset 17 from the same weights the PyTorch backend uses (LayerNorm stays
one fused `LayerNormalization` op; a decomposed fp16 LayerNorm overflows silently on Whisper's
residual stream):

    encoder.onnx   features [B, mels, F] -> cross_k, cross_v [L, B, H, F/2, Dh] (+ audio_embeds [B, Q, d_llm])
                   one encoder pass; the connector reads the tapped layers inside the same graph;
                   F = 3000 (the 30 s window) or fewer (a shorter window, `set_encoder_padding`)
    decoder.onnx   input_ids [B, S], cross_k/v, past_k/v [L, B, H, P, Dh] -> logits [B, V], k, v
    llm.onnx       inputs_embeds [B, S, D], attention_mask [B, P+S], position_ids [B, S], past_k/v -> logits [B, V], k, v

Each graph is checked against PyTorch on the same inputs before the export is kept (relative
max difference `PARITY_RTOL`); the manifest records the measured differences.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from desta_edge.runtime.audio import N_FRAMES
from desta_edge.runtime.onnx_backend import (
    DECODER_FILE, EMBEDDINGS_FILE, ENCODER_FILE, FORMAT_VERSION, LLM_FILE, LLM_TOKENIZER_DIR, MANIFEST,
    QUANTIZER_REVISION, WHISPER_DIR, graph_signature, open_session,
)

from .graphs import LlamaStep, WhisperCrossKV, WhisperDecoderStep
from .staging import staged_dir

logger = logging.getLogger(__name__)

OPSET = 17  # first opset with a fused LayerNormalization op
PARITY_RTOL = 1e-4  # max |ONNX - PyTorch| / max |PyTorch| accepted per output
SHORT_WINDOW_FRAMES = 600  # a second parity check of the encoder on a 6 s window (dynamic frames)


class EncoderGraph(nn.Module):
    """One encoder pass -> the decoder's cross-attention k/v and, with an adapter, audio embeddings."""

    def __init__(self, front: nn.Module, connector: nn.Module | None) -> None:
        super().__init__()
        self.front = front
        self.cross = WhisperCrossKV(front.whisper)
        self.connector = connector

    def forward(self, features: torch.Tensor):
        out = self.front.encode_graph(features)
        cross_k, cross_v = self.cross(out.final)
        if self.connector is None:
            return cross_k, cross_v
        return cross_k, cross_v, self.connector(out.taps)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in transformers
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)


def _parity(module: nn.Module, args: tuple, path: Path, inputs: list[str]) -> dict[str, float]:
    with torch.inference_mode():
        want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    session = open_session(path, torch.device("cpu"))
    got = session.run(None, {n: a.numpy() for n, a in zip(inputs, args)})
    names = [o.name for o in session.get_outputs()]
    diffs = {n: float(np.abs(g - w.numpy()).max()) for n, g, w in zip(names, got, want)}
    scales = [max(float(w.abs().max()), 1.0) for w in want]
    bad = {n: d for (n, d), scale in zip(diffs.items(), scales) if d > PARITY_RTOL * scale}
    if bad:
        raise RuntimeError(f"{path.name} disagrees with PyTorch beyond {PARITY_RTOL} relative: {bad}")
    return diffs


QUANTIZATIONS = ("int8", "int4")
GRAPHS = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "llm": LLM_FILE}  # graph name -> file
NBITS_BLOCK_SIZE = 32  # weights per quantization block (one scale and zero point each) for int4
NBITS_ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (the fastest CPU kernels)
# MatMuls that int8 leaves in fp32: each feed-forward block's output projection (LLM `mlp.down_proj`,
# Whisper `fc2`, the Q-Former's `output.dense`), whose input, after the gated activation, carries the
# outliers one int8 scale per tensor cannot hold, and the vocabulary projections (`lm_head`, Whisper's
# `proj_out`), whose argmax is the answer. Measured on the tiny preset (README, Backends and export).
INT8_KEEP_FP32 = re.compile(r"/mlp/down_proj|/lm_head/|/fc2|/proj_out/|/layer\.\d+/output/dense")


def export_onnx(model, source: str, out_dir: str | os.PathLike, *, opset: int = OPSET, quantize: str | None = None,
                quantize_graphs: tuple[str, ...] = tuple(GRAPHS)) -> dict:
    """Export `model` (a float32 CPU PyTorch DestaModel loaded from `source`) into `out_dir`.

    quantize="int8": after the fp32 graphs pass the parity check, their MatMul/Gemm weights are
    quantized to int8 (ONNX Runtime dynamic quantization: activations are quantized per call), all
    but those `INT8_KEEP_FP32` names.
    quantize="int4": their MatMul weights become 4-bit blocks of `NBITS_BLOCK_SIZE` with a scale and
    zero point each (ONNX Runtime's MatMulNBits). The accuracy cost of either is measured, not
    bounded here: see the README and `desta-edge eval`.
    quantize_graphs: which graphs `quantize` applies to (default all three). ("llm",) keeps the
    speech graphs in fp32, so transcripts stay exactly PyTorch's while the LLM step gets faster.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} or None, got {quantize!r}")
    unknown = [g for g in quantize_graphs if g not in GRAPHS]
    if unknown or not quantize_graphs:
        raise ValueError(f"quantize_graphs must name some of {tuple(GRAPHS)}, got {quantize_graphs!r}")
    from safetensors.torch import save_file

    if model.lora is not None:
        raise ValueError(f"{source} has a LoRA (use_lora): ONNX export of LoRA adapters is not supported yet; "
                         "run it with the torch backend")
    if model.device.type != "cpu" or getattr(model.backend, "dtype", None) != torch.float32:
        raise ValueError("export from a float32 CPU model: DestaModel.from_pretrained(NAME, device='cpu')")
    front = model.backend.perception.whisper
    whisper, llm = front.whisper, model.backend.llm_model
    connector = model.connector if model.audio_features else None
    wcfg, lcfg = whisper.config, llm.config
    dec_cache = {"layers": wcfg.decoder_layers, "heads": wcfg.decoder_attention_heads,
                 "head_dim": wcfg.d_model // wcfg.decoder_attention_heads}
    llm_step = LlamaStep(llm).eval()
    llm_cache = {"layers": lcfg.num_hidden_layers, "kv_heads": lcfg.num_key_value_heads, "head_dim": llm_step.dh}

    with staged_dir(out_dir) as tmp:
        parity: dict[str, dict[str, float]] = {}
        # encoder (+ connector): batch and frames are dynamic (a shorter window: set_encoder_padding)
        enc = EncoderGraph(front, connector).eval()
        enc_out = ["cross_k", "cross_v"] + (["audio_embeds"] if connector is not None else [])
        g = torch.Generator().manual_seed(0)
        feats = torch.rand(2, front.n_mels, N_FRAMES, generator=g) * 2 - 1  # the log-mel value range
        logger.info("exporting %s", ENCODER_FILE)
        cross_axes = {1: "b", 3: "enc_t"}
        _export(enc, (feats,), tmp / ENCODER_FILE, ["features"], enc_out,
                {"features": {0: "b", 2: "frames"}, "cross_k": cross_axes, "cross_v": cross_axes,
                 "audio_embeds": {0: "b"}}, opset)
        parity["encoder"] = _parity(enc, (feats,), tmp / ENCODER_FILE, ["features"])
        short = feats[:1, :, :SHORT_WINDOW_FRAMES].contiguous()
        parity["encoder_short_window"] = _parity(enc, (short,), tmp / ENCODER_FILE, ["features"])

        # Whisper decoder step: batch, new tokens and past length are dynamic
        with torch.inference_mode():
            ck, cv = enc.cross(torch.randn(2, wcfg.max_source_positions, wcfg.d_model, generator=g))
        past = torch.randn(dec_cache["layers"], 2, dec_cache["heads"], 3, dec_cache["head_dim"], generator=g)
        dec_args = (torch.tensor([[1, 2], [3, 4]]), ck.clone(), cv.clone(), past, past.clone())
        dec_in = ["input_ids", "cross_k", "cross_v", "past_k", "past_v"]
        kv_axes = {1: "b", 3: "p"}
        logger.info("exporting %s", DECODER_FILE)
        _export(WhisperDecoderStep(whisper).eval(), dec_args, tmp / DECODER_FILE, dec_in, ["logits", "k", "v"],
                {"input_ids": {0: "b", 1: "s"}, "cross_k": cross_axes, "cross_v": cross_axes, "past_k": kv_axes,
                 "past_v": kv_axes, "logits": {0: "b"}, "k": {1: "b", 3: "t"}, "v": {1: "b", 3: "t"}}, opset)
        parity["decoder"] = _parity(WhisperDecoderStep(whisper).eval(), dec_args, tmp / DECODER_FILE, dec_in)

        # LLM step on embeddings
        lpast = torch.randn(llm_cache["layers"], 2, llm_cache["kv_heads"], 3, llm_cache["head_dim"], generator=g)
        mask = torch.ones(2, 7, dtype=torch.long)
        mask[1, 0] = 0
        llm_args = (torch.randn(2, 4, lcfg.hidden_size, generator=g) * 0.02, mask,
                    torch.tensor([[3, 4, 5, 6], [2, 3, 4, 5]]), lpast, lpast.clone())
        llm_in = ["inputs_embeds", "attention_mask", "position_ids", "past_k", "past_v"]
        logger.info("exporting %s", LLM_FILE)
        _export(llm_step, llm_args, tmp / LLM_FILE, llm_in, ["logits", "k", "v"],
                {"inputs_embeds": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "t"}, "position_ids": {0: "b", 1: "s"},
                 "past_k": kv_axes, "past_v": kv_axes, "logits": {0: "b"}, "k": {1: "b", 3: "t"}, "v": {1: "b", 3: "t"}},
                opset)
        parity["llm"] = _parity(llm_step, llm_args, tmp / LLM_FILE, llm_in)

        quantized = [g for g in GRAPHS if g in quantize_graphs] if quantize else []  # in a fixed order
        kept_fp32: dict[str, int] = {}
        if quantize == "int8":
            kept_fp32 = _quantize_int8(tmp, {g: GRAPHS[g] for g in quantized})
        elif quantize == "int4":
            _quantize_int4(tmp, tuple(GRAPHS[g] for g in quantized))

        # everything else the runtime needs: embeddings, tokenizers, configs
        save_file({"weight": llm.get_input_embeddings().weight.detach().float().contiguous()}, str(tmp / EMBEDDINGS_FILE))
        model.tokenizer.save_pretrained(tmp / LLM_TOKENIZER_DIR)
        front.tokenizer.save_pretrained(tmp / WHISPER_DIR)
        whisper.generation_config.save_pretrained(tmp / WHISPER_DIR)
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": str(Path(source).resolve()) if Path(source).is_dir() else source,
            "opset": opset,
            "has_connector": connector is not None,
            "n_mels": front.n_mels,
            "decoder_cache": dec_cache,
            "llm_cache": llm_cache,
            "eos_token_ids": sorted(model.eos_ids),
            "parity_max_abs": parity,  # of the fp32 graphs, before any quantization
            # input dims per graph (names for dynamic axes): TensorRT profiles are built from these
            "signatures": {g: graph_signature(tmp / f) for g, f in GRAPHS.items()},
            "quantization": quantize,
            "quantized_graphs": quantized,
            "quantizer_revision": QUANTIZER_REVISION,
            "int8_fp32_matmuls": kept_fp32,  # per quantized graph, MatMuls int8 left in fp32 (INT8_KEEP_FP32)
            "torch_version": torch.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def int8_kept_nodes(graph) -> list[str]:
    """Names of the MatMul/Gemm nodes of `graph` (an onnx GraphProto) that int8 keeps in fp32 (INT8_KEEP_FP32)."""
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and INT8_KEEP_FP32.search(n.name)]


def unshare_weights(graph) -> int:
    """Let every MatMul/Gemm of `graph` (an onnx GraphProto, changed in place) read its weight straight
    from the initializer; returns how many were rewired.

    The exporter gives a weight used by several nodes (the connector runs once per tapped layer
    with the same weights) an Identity node per extra use. Both quantizers only take a
    MatMul whose weight is an initializer, so without this those MatMuls would stay fp32 (60 in the
    tiny encoder graph, 12 of them projections of all 1,500 frames). The graph computes the same.
    """
    weights = {t.name for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in weights}
    rewired = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in alias:
            node.input[1] = alias[node.input[1]]
            rewired += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in used]:
        graph.node.remove(node)
    return rewired


def _quantize_int8(directory: Path, files: dict[str, str]) -> dict[str, int]:
    """Quantize the graphs `files` (name -> file) in place; returns how many MatMuls each kept in fp32."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # pragma: no cover - onnxruntime ships it
        raise RuntimeError("int8 quantization needs onnxruntime's quantization tools: pip install onnxruntime") from e
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # quantize_dynamic logs a pre-processing hint on the root logger
    kept = {}
    try:
        for graph, name in files.items():
            src, dst = directory / name, directory / (name + ".int8")
            model = onnx.load(str(src))
            unshare_weights(model.graph)
            keep = int8_kept_nodes(model.graph)
            logger.info("quantizing %s to int8 weights (%d MatMuls kept in fp32)", name, len(keep))
            # Gather: the decoder's token embeddings (60 MB less). Conv stays fp32: ConvInteger ran
            # the encoder's two convolutions 6x slower than Conv on an AVX-512 CPU.
            quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                             op_types_to_quantize=["MatMul", "Gemm", "Gather"])
            os.replace(dst, src)
            kept[graph] = len(keep)
    finally:
        root.setLevel(level)
    return kept


def _quantize_int4(directory: Path, files: tuple[str, ...]) -> None:
    """Block-wise 4-bit weights for every MatMul with a constant weight (ONNX Runtime's MatMulNBits)."""
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise RuntimeError("int4 quantization needs onnxruntime's MatMulNBits quantizer and onnx-ir: "
                           "pip install 'onnxruntime>=1.20' onnx-ir") from e
    for name in files:
        path = directory / name
        logger.info("quantizing %s to int4 weights (blocks of %d)", name, NBITS_BLOCK_SIZE)
        model = onnx.load(str(path))
        unshare_weights(model.graph)
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=NBITS_BLOCK_SIZE,
                                         is_symmetric=False, accuracy_level=NBITS_ACCURACY_LEVEL)
        quantizer.process()
        quantizer.model.save_model_to_file(str(path) + ".int4", use_external_data_format=False)
        os.replace(str(path) + ".int4", path)

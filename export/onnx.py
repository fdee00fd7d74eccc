"""ONNX export, first stage: Whisper encoder + Q-Former connector as one graph.

    features [B, n_mels, 3000] ──► encoder.onnx ──► final [B, 1500, d_enc]          (for the ASR decoder)
                                                └─► audio_embeds [B, Q, d_llm]      (when the model has an adapter)

The graph is traced from the same code the PyTorch backend runs (`WhisperFrontEnd.encode_graph`
and the connector), at opset 17 so LayerNorm stays one fused `LayerNormalization` op (a
decomposed fp16 LayerNorm overflows silently on Whisper's residual stream). The export directory
records its source model; `DestaModel.from_pretrained(DIR, backend="onnx")` loads the decoder and
LLM from that source in PyTorch. An export is checked against PyTorch before it is kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from desta_edge.runtime.audio import N_FRAMES
from desta_edge.runtime.onnx_backend import ENCODER_FILE, FORMAT_VERSION, MANIFEST, open_session

logger = logging.getLogger(__name__)

OPSET = 17  # first opset with a fused LayerNormalization op
PARITY_RTOL = 1e-4  # max |ONNX - PyTorch| / max |PyTorch| accepted on fp32 outputs


class EncoderGraph(nn.Module):
    """The traced module: one encoder pass, then the connector on the tapped layers."""

    def __init__(self, front: nn.Module, connector: nn.Module | None) -> None:
        super().__init__()
        self.front = front
        self.connector = connector

    def forward(self, features: torch.Tensor):
        out = self.front.encode_graph(features)
        if self.connector is None:
            return out.final
        return out.final, self.connector(out.taps)


def export_onnx(model, source: str, out_dir: str | os.PathLike, *, opset: int = OPSET) -> dict:
    """Export `model` (loaded from `source`) into `out_dir`; returns the manifest written."""
    if model.device.type != "cpu" or model.backend.dtype != torch.float32:
        raise ValueError("export from a float32 CPU model: DestaModel.from_pretrained(..., device='cpu')")
    front = model.backend.perception.whisper
    connector = model.connector if model.audio_features else None
    graph = EncoderGraph(front, connector).eval()
    outputs = ["final"] + (["audio_embeds"] if connector is not None else [])
    example = model.features([np.zeros(16000, dtype=np.float32)])
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        logger.info("tracing the encoder%s graph", " + connector" if connector is not None else "")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow in transformers
            torch.onnx.export(
                graph, (example,), str(tmp / ENCODER_FILE), input_names=["features"], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in ["features", *outputs]}, opset_version=opset, dynamo=False,
            )
        parity = check_parity(graph, tmp, front.n_mels)
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": str(Path(source).resolve()) if Path(source).is_dir() else source,
            "opset": opset,
            "graphs": {"encoder": {"file": ENCODER_FILE, "inputs": ["features"], "outputs": outputs}},
            "has_connector": connector is not None,
            "parity_max_abs": parity,
            "runs_in_pytorch": ["whisper_decoder", "llm"],
            "torch_version": torch.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_parity(graph: EncoderGraph, export_dir: Path, n_mels: int, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same log-mel input; error if they disagree."""
    g = torch.Generator().manual_seed(seed)
    features = (torch.rand(batch, n_mels, N_FRAMES, generator=g) * 2 - 1).float()  # the log-mel range
    with torch.inference_mode():
        want = graph(features)
    want = want if isinstance(want, tuple) else (want,)
    session = open_session(export_dir / ENCODER_FILE, torch.device("cpu"))
    got = session.run(None, {"features": features.numpy()})
    names = [o.name for o in session.get_outputs()]
    diffs = {n: float(np.abs(a - b.numpy()).max()) for n, a, b in zip(names, got, want)}
    scale = {n: float(np.abs(b.numpy()).max()) or 1.0 for n, b in zip(names, want)}
    bad = {n: d for n, d in diffs.items() if d > PARITY_RTOL * scale[n]}
    if bad:
        raise RuntimeError(f"ONNX export disagrees with PyTorch beyond {PARITY_RTOL} relative: {bad}")
    return diffs

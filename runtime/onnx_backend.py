"""ONNX Runtime backend, first stage: the encoder + connector graph runs in ONNX Runtime.

An export directory (`desta-edge export onnx`) holds `encoder.onnx` (log-mel in; final encoder
states and, when the model has a connector, the audio embeddings out) and `onnx_export.json`
naming the source model. The Whisper decoder and the LLM still run in PyTorch, loaded from that
source: exporting them (with key/value caches) is the next step of the export work.

Execution providers: CPU (intra-op threads = physical cores by default), CUDA when the
onnxruntime-gpu wheel and a GPU are present. The CUDA path has not run on hardware yet.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .backends import EncodedAudio

logger = logging.getLogger(__name__)

MANIFEST = "onnx_export.json"
ENCODER_FILE = "encoder.onnx"
FORMAT_VERSION = 1


def is_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: ONNX export format {manifest.get('format_version')}, expected {FORMAT_VERSION}; re-export")
    return manifest


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError('the onnx backend needs ONNX Runtime: pip install "desta-edge[onnx]" (onnx, onnxruntime)') from e
    return onnxruntime


def open_session(path: Path, device: torch.device, threads: int | None = None):
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        else:
            logger.warning("CUDA requested but this onnxruntime has no CUDA provider: the encoder runs on CPU")
    return ort.InferenceSession(str(path), opts, providers=providers)


class OnnxEncoderBackend:
    """The PyTorch backend with `encode` served by ONNX Runtime (same inputs, same outputs)."""

    def __init__(self, torch_backend, export_dir: str | os.PathLike, has_connector: bool) -> None:
        self._torch = torch_backend
        self.session = open_session(Path(export_dir) / ENCODER_FILE, torch_backend.device)
        self._outputs = [o.name for o in self.session.get_outputs()]
        if has_connector and "audio_embeds" not in self._outputs:
            raise ValueError(f"{export_dir}: the exported graph has no audio_embeds output; re-export with the adapter")

    def __getattr__(self, name):  # decoder, LLM, embeddings, reset: the PyTorch backend's
        return getattr(self._torch, name)

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        # features: [B, n_mels, 3000] -> final [B, T, d_enc] (+ audio_embeds [B, Q, d_llm])
        out = dict(zip(self._outputs, self.session.run(None, {"features": features.float().cpu().numpy()})))
        device, dtype = self._torch.device, self._torch.dtype
        final = torch.from_numpy(np.ascontiguousarray(out["final"])).to(device, dtype)
        embeds = None
        if with_connector:
            embeds = torch.from_numpy(np.ascontiguousarray(out["audio_embeds"])).to(device, dtype)
        return EncodedAudio(final=final, audio_embeds=embeds)

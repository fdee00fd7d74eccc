"""ONNX Runtime backend: the whole model from an export directory, no PyTorch backbones needed.

An export directory (`desta-edge export onnx`) is self-contained:

    onnx_export.json      manifest: format, graph signatures, cache shapes, end-of-answer ids, parity
    config.json           the DeSTA config (prompt size, audio locator, placeholder token, ...)
    encoder.onnx          log-mel [B, mels, 3000] -> Whisper cross-attention k/v [L, B, H, T, Dh]
                          (+ audio embeddings [B, Q, d_llm] when the model has an adapter)
    decoder.onnx          Whisper decoder step with explicit self-attention k/v
    llm.onnx              LLM step on input embeddings with explicit k/v
    llm_embeddings.safetensors, llm/ (tokenizer), whisper/ (tokenizer + generation config)

The orchestration (prompt assembly, splicing, greedy/sampled decoding loops, the prefix cache)
is shared with the PyTorch backend; only the step functions differ. CPU execution provider by
default; CUDA / TensorRT execution providers when requested and present (not yet run on
hardware here).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .backends import EncodedAudio
from .generation import PrefixCache, SamplingOptions, StepTimes, eos_ids_of, stream_with_prefix

logger = logging.getLogger(__name__)

MANIFEST = "onnx_export.json"
FORMAT_VERSION = 2
ENCODER_FILE, DECODER_FILE, LLM_FILE = "encoder.onnx", "decoder.onnx", "llm.onnx"
EMBEDDINGS_FILE = "llm_embeddings.safetensors"
LLM_TOKENIZER_DIR, WHISPER_DIR = "llm", "whisper"


def is_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: ONNX export format {manifest.get('format_version')}, this desta-edge reads "
            f"{FORMAT_VERSION}; export again with `desta-edge export onnx`"
        )
    return manifest


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError('the onnx backend needs ONNX Runtime: pip install "desta-edge[onnx]"') from e
    return onnxruntime


def open_session(path: Path, device: torch.device, threads: int | None = None):
    """An inference session: all graph optimizations, one intra-op thread per usable core."""
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    opts.intra_op_num_threads = threads or cores
    opts.inter_op_num_threads = 1
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        else:
            logger.warning("CUDA requested but this onnxruntime has no CUDA provider (pip install onnxruntime-gpu): using CPU")
    return ort.InferenceSession(str(path), opts, providers=providers)


class _OrtLLM:
    """Callable like a transformers causal LM (the subset `generate_stream` uses), on llm.onnx."""

    def __init__(self, session, embeddings: torch.Tensor, cache_shape: dict) -> None:
        self.session = session
        self.embeddings = embeddings  # [vocab, d]
        self.layers, self.kv_heads, self.head_dim = cache_shape["layers"], cache_shape["kv_heads"], cache_shape["head_dim"]

    def __call__(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                 past_key_values=None, use_cache=True):
        if inputs_embeds is None:
            inputs_embeds = self.embeddings[input_ids]
        b, s = inputs_embeds.shape[:2]
        if past_key_values is None:
            empty = np.zeros((self.layers, b, self.kv_heads, 0, self.head_dim), dtype=np.float32)
            past_key_values = (empty, empty)
        p = past_key_values[0].shape[3]
        if attention_mask is None:
            attention_mask = torch.ones(b, p + s, dtype=torch.long)
        if position_ids is None:
            position_ids = torch.arange(p, p + s).repeat(b, 1)
        logits, k, v = self.session.run(None, {
            "inputs_embeds": inputs_embeds.float().numpy(),
            "attention_mask": attention_mask.long().numpy(),
            "position_ids": position_ids.long().numpy(),
            "past_k": past_key_values[0],
            "past_v": past_key_values[1],
        })
        return SimpleNamespace(logits=torch.from_numpy(logits)[:, None], past_key_values=(k, v))


class OnnxBackend:
    """Every stage in ONNX Runtime; same inputs and outputs as `TorchBackend`."""

    connector = None  # the trained weights live inside encoder.onnx

    def __init__(self, export_dir: str | os.PathLike, manifest: dict, device: torch.device, whisper_tokenizer) -> None:
        from safetensors.torch import load_file
        from transformers import GenerationConfig

        from .whisper import WhisperDecoding

        d = Path(export_dir)
        self.manifest = manifest
        self.device = torch.device("cpu")  # tensors handed to and from ONNX Runtime live on the host
        self.dtype = torch.float32
        self.n_mels = manifest["n_mels"]
        self.encoder = open_session(d / ENCODER_FILE, device)
        self.decoder = open_session(d / DECODER_FILE, device)
        self._enc_outputs = [o.name for o in self.encoder.get_outputs()]
        embeddings = load_file(str(d / EMBEDDINGS_FILE))["weight"]
        self.llm = _OrtLLM(open_session(d / LLM_FILE, device), embeddings, manifest["llm_cache"])
        self.decoding = WhisperDecoding(GenerationConfig.from_pretrained(d / WHISPER_DIR), whisper_tokenizer)
        self._dec_cache = manifest["decoder_cache"]
        self._prefix = PrefixCache()

    def to(self, device=None, dtype=None) -> "OnnxBackend":
        if (device is not None and torch.device(device).type != "cpu") or dtype not in (None, torch.float32):
            raise ValueError("the onnx backend picks its execution provider at load time; pass device= to from_pretrained")
        return self

    def eos_ids(self, tokenizer) -> set[int]:
        return eos_ids_of(SimpleNamespace(eos_token_id=self.manifest["eos_token_ids"]), tokenizer)

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        # features [B, n_mels, 3000] -> cross k/v [L, B, H, T, Dh] (+ audio embeddings [B, Q, d_llm])
        out = dict(zip(self._enc_outputs, self.encoder.run(None, {"features": features.float().cpu().numpy()})))
        embeds = None
        if with_connector:
            if "audio_embeds" not in out:
                raise RuntimeError("this export has no connector (transcript-only)")
            embeds = torch.from_numpy(out["audio_embeds"])
        return EncodedAudio(final=(out["cross_k"], out["cross_v"]), audio_embeds=embeds)

    def transcribe(self, encoded: EncodedAudio, rows: list[int], max_new_tokens: int) -> list[str]:
        cross_k, cross_v = (np.ascontiguousarray(t[:, rows]) for t in encoded.final)
        c = self._dec_cache

        def step(tokens: torch.Tensor, state):
            if state is None:
                empty = np.zeros((c["layers"], len(rows), c["heads"], 0, c["head_dim"]), dtype=np.float32)
                state = (empty, empty)
            logits, k, v = self.decoder.run(None, {
                "input_ids": tokens.long().numpy(), "cross_k": cross_k, "cross_v": cross_v,
                "past_k": state[0], "past_v": state[1],
            })
            return torch.from_numpy(logits), (k, v)

        return self.decoding.decode(self.decoding.greedy(step, len(rows), max_new_tokens))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.embeddings[ids.cpu()]

    def stream_tokens(self, *, attention_mask, input_ids, inputs_embeds, eos_ids: set[int], opts: SamplingOptions,
                      times: StepTimes, cancelled=None, prefix_ids=None):
        return stream_with_prefix(self.llm, self._prefix, attention_mask=attention_mask, input_ids=input_ids,
                                  inputs_embeds=inputs_embeds, eos_ids=eos_ids, opts=opts, times=times,
                                  cancelled=cancelled, prefix_ids=prefix_ids)

    def reset(self) -> None:
        self._prefix.reset()

"""TensorRT-LLM backend: the LLM in a TensorRT-LLM engine, the encoder in TensorRT. NOT YET RUN ON HARDWARE.

Written to the documented APIs (TensorRT 10 runtime, `tensorrt_llm.runtime.ModelRunner` of
TensorRT-LLM 1.2.x) and tested up to the library boundary: the id + prompt-table inputs
(`prompt_table.py`), the runner-output bookkeeping and the construction errors. It needs an
NVIDIA GPU and NVIDIA's libraries, neither of which the development machines have.

One directory holds everything, an ONNX export with two engine subdirectories:

    EXPORT/            desta-edge export onnx --model NAME --out EXPORT
                       (config, tokenizers, encoder.onnx, decoder.onnx, LLM embeddings)
    EXPORT/tensorrt/   desta-edge export tensorrt --onnx EXPORT --out EXPORT/tensorrt   (optional)
    EXPORT/trtllm/     desta-edge export trtllm --model NAME --out EXPORT/trtllm

Stages: encoder + connector in the TensorRT engine (ONNX Runtime's CUDA provider on
encoder.onnx when there is no engine); the Whisper decoder (ASR) in ONNX Runtime; the LLM in
`ModelRunner`, which takes token ids, not embeddings: each prompt arrives as ids whose audio
positions address a prompt-embedding table (`prompt_inputs`). The prompt-prefix cache of the
other backends does not apply (`prefix_ids` is ignored); TensorRT-LLM has its own KV reuse.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .backends import EncodedAudio
from .config import DestaConfig
from .generation import SamplingOptions, StepTimes, eos_ids_of
from .onnx_backend import (
    DECODER_FILE, EMBEDDINGS_FILE, ENCODER_FILE, WHISPER_DIR, is_onnx_export, open_session, read_manifest,
)
from .prompt import PromptBatch
from .prompt_table import PromptTableInputs, prompt_table_inputs

# names shared with desta_edge.export.tensorrt / .trtllm (export imports them from here)
TENSORRT_DIR, TRTLLM_DIR = "tensorrt", "trtllm"  # subdirectories of an ONNX export
ENGINE_FILE, ENGINE_MANIFEST, ENGINE_FORMAT_VERSION = "encoder.engine", "tensorrt_engine.json", 1
TRTLLM_MANIFEST, TRTLLM_FORMAT_VERSION = "trtllm_export.json", 1
TRTLLM_ENGINE_DIR, TRTLLM_TOKENIZER_DIR = "engine", "llm"

TENSORRT_HINT = (
    "TensorRT is not installed. It comes from NVIDIA, not PyPI's stub package: on a desktop/server GPU "
    "`pip install tensorrt --extra-index-url https://pypi.nvidia.com` (TensorRT 10.x, matching your CUDA); "
    "on Jetson it ships with JetPack (apt package python3-libnvinfer). "
    "Without it, run the same encoder.onnx with `--backend onnx`."
)
TENSORRT_LLM_HINT = (
    "TensorRT-LLM is not installed. It comes from NVIDIA, not PyPI's stub package: "
    "`pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com` (Linux with an NVIDIA GPU, CUDA 12/13, "
    "and MPI: apt-get install libopenmpi-dev); on Jetson use the JetPack build of TensorRT-LLM "
    "(the v0.12.0-jetson branch) or TensorRT Edge-LLM."
)
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool}


def tensorrt_module():
    """`import tensorrt`, or a RuntimeError that says how to install it."""
    try:
        import tensorrt
    except ImportError as e:
        raise RuntimeError(TENSORRT_HINT) from e
    return tensorrt


def model_runner_class():
    """`tensorrt_llm.runtime.ModelRunner`, or a RuntimeError that says how to install TensorRT-LLM."""
    try:
        from tensorrt_llm.runtime import ModelRunner
    except ImportError as e:
        raise RuntimeError(TENSORRT_LLM_HINT) from e
    return ModelRunner


# ---------------------------------------------------------------------- the directory


def check_trtllm_export(export_dir: str | os.PathLike) -> tuple[dict, dict, DestaConfig]:
    """(ONNX manifest, TensorRT-LLM manifest, DeSTA config) of a trtllm directory; errors say what to run."""
    d = Path(export_dir)
    if not is_onnx_export(d):
        raise FileNotFoundError(
            f"{d}: the trtllm backend loads an ONNX export with a TensorRT-LLM engine inside; create it with "
            f"`desta-edge export onnx --model NAME --out {d}` and "
            f"`desta-edge export trtllm --model NAME --out {d / TRTLLM_DIR}`"
        )
    onnx_manifest = read_manifest(d)
    path = d / TRTLLM_DIR / TRTLLM_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{d} has no TensorRT-LLM engine; build one with "
                                f"`desta-edge export trtllm --model NAME --out {d / TRTLLM_DIR}`")
    llm = json.loads(path.read_text())
    if llm.get("format_version") != TRTLLM_FORMAT_VERSION:
        raise ValueError(f"{path}: format {llm.get('format_version')}, this desta-edge reads {TRTLLM_FORMAT_VERSION}; "
                         "run `desta-edge export trtllm` again")
    config = DestaConfig.from_json(d / "config.json")
    built = llm["desta_config"]
    if built.get("llm_model_id") != config.llm_model_id or llm["prompt_size"] != config.prompt_size:
        raise ValueError(
            f"{d}: the TensorRT-LLM engine was built for {built.get('llm_model_id')} (prompt size {llm['prompt_size']}), "
            f"the ONNX export holds {config.llm_model_id} (prompt size {config.prompt_size}); export both from one model"
        )
    return onnx_manifest, llm, config


# ---------------------------------------------------------------------- runner inputs and outputs (pure)


def stop_words_array(ids: list[int], batch: int) -> np.ndarray | None:
    """Single-token stop words in TensorRT-LLM's layout [batch, 2, n]: the flat ids, then each word's end offset."""
    if not ids:
        return None
    row = np.array([list(ids), list(range(1, len(ids) + 1))], dtype=np.int32)
    return np.repeat(row[None], batch, axis=0)


def runner_kwargs(opts: SamplingOptions, eos_ids: set[int], batch: int, max_new_tokens: int) -> dict:
    """`ModelRunner.generate` keyword arguments for the seed's sampling options, streaming.

    The first end id is the runner's `end_id`; any others become single-token stop words.
    """
    ends = sorted(eos_ids)
    kw: dict = dict(max_new_tokens=max_new_tokens, end_id=ends[0], pad_id=ends[0], streaming=True, return_dict=True,
                    output_sequence_lengths=True, stop_words_list=stop_words_array(ends[1:], batch))
    if opts.do_sample:
        kw.update(temperature=opts.temperature, top_p=opts.top_p, top_k=0)
    else:
        kw.update(top_k=1)  # greedy
    return kw


def runner_steps(outputs: Iterable[dict], input_lengths: list[int], eos_ids: set[int]) -> Iterator[torch.Tensor]:
    """The runner's streamed outputs -> next-token ids [B] one step at a time, as `generate_stream` yields them.

    Each output holds `output_ids` [B, beams, T] (prompt then answer) and `sequence_lengths`
    [B, beams]. Rows that ended yield the first end id. A row that stops growing without showing
    an end id holds the others back until the stream ends, then the rest is handed out.
    """
    n = len(input_lengths)
    fill = min(eos_ids)
    read, done = [0] * n, [False] * n
    ids, avail = None, [0] * n

    def step(rows: list[int]) -> torch.Tensor:
        out = [fill] * n
        for b in rows:
            tok = int(ids[b, input_lengths[b] + read[b]])
            read[b] += 1
            out[b] = tok
            done[b] = tok in eos_ids
        return torch.tensor(out)

    for output in outputs:
        ids = output["output_ids"][:, 0].cpu()
        avail = [int(n_) - length for n_, length in zip(output["sequence_lengths"][:, 0].tolist(), input_lengths)]
        while not all(done):
            live = [b for b in range(n) if not done[b]]
            if any(read[b] >= avail[b] for b in live):
                break
            yield step(live)
        if all(done):
            return
    while ids is not None:  # the runner is finished: what is left, rows without more tokens are over
        live = [b for b in range(n) if not done[b] and read[b] < avail[b]]
        if not live:
            return
        for b in range(n):
            if b not in live:
                done[b] = True
        yield step(live)


# ---------------------------------------------------------------------- engines


class TrtEncoder:
    """encoder.engine on the GPU: log-mel features in, the graph's named outputs out (CUDA tensors)."""

    def __init__(self, engine_path: Path, device: torch.device, max_batch: int) -> None:
        trt = tensorrt_module()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not load the engine (built by another TensorRT version "
                               "or for another GPU? build it again on this machine)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.device, self.max_batch = device, max_batch

    def __call__(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if features.shape[0] > self.max_batch:
            raise ValueError(f"{features.shape[0]} clips at once; the encoder engine takes at most {self.max_batch} "
                             "(desta-edge export tensorrt --max-batch)")
        x = features.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape("features", tuple(x.shape))
        self.context.set_tensor_address("features", x.data_ptr())
        out: dict[str, torch.Tensor] = {}
        for name in self.outputs:
            dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]
            t = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, t.data_ptr())
            out[name] = t
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("the TensorRT encoder engine failed to run")
        stream.synchronize()
        return out


class TrtLlmBackend:
    """Encoder in TensorRT (or ONNX Runtime), ASR decoder in ONNX Runtime, LLM in TensorRT-LLM."""

    connector = None  # the trained weights live inside the encoder graph/engine
    full_window_only = "the TensorRT-LLM backend's encoder runs the full 30 s window only"
    backend_name = "trtllm"

    def __init__(self, export_dir: str | os.PathLike, whisper_tokenizer, device: str | torch.device | None = None) -> None:
        from transformers import GenerationConfig

        from .whisper import WhisperDecoding

        d = Path(export_dir)
        self.export_dir = d
        self.manifest, self.llm_manifest, _ = check_trtllm_export(d)
        model_runner = model_runner_class()
        if not torch.cuda.is_available():
            raise RuntimeError("the trtllm backend needs an NVIDIA GPU with CUDA; use --backend onnx or torch here")
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        if self.device.type != "cuda":
            raise ValueError(f"the trtllm backend runs on CUDA, not {self.device}")
        self.dtype = torch.float32  # what encode/embed hand back to DestaModel
        self.n_mels = self.manifest["n_mels"]
        engine_manifest = d / TENSORRT_DIR / ENGINE_MANIFEST
        if engine_manifest.is_file():
            em = json.loads(engine_manifest.read_text())
            if em.get("format_version") != ENGINE_FORMAT_VERSION or em.get("n_mels") != self.n_mels:
                raise ValueError(f"{engine_manifest} does not match this export; run `desta-edge export tensorrt` again")
            self._trt_encoder: TrtEncoder | None = TrtEncoder(d / TENSORRT_DIR / em["engine"], self.device, em["max_batch"])
            self._ort_encoder = None
        else:
            self._trt_encoder, self._ort_encoder = None, open_session(d / ENCODER_FILE, self.device)
        self._decoder = open_session(d / DECODER_FILE, self.device)
        self.decoding = WhisperDecoding(GenerationConfig.from_pretrained(d / WHISPER_DIR), whisper_tokenizer)
        self.runner = model_runner.from_dir(str(d / TRTLLM_DIR / self.llm_manifest["engine_dir"]))
        self._embeddings: torch.Tensor | None = None

    def to(self, device=None, dtype=None) -> "TrtLlmBackend":
        if (device is not None and torch.device(device) != self.device) or dtype not in (None, torch.float32):
            raise ValueError("the trtllm backend's device and precision are fixed when its engines are built and loaded")
        return self

    def eos_ids(self, tokenizer) -> set[int]:
        from types import SimpleNamespace

        return eos_ids_of(SimpleNamespace(eos_token_id=self.llm_manifest["eos_token_ids"]), tokenizer)

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        if self._trt_encoder is not None:
            out = {k: v.float().cpu() for k, v in self._trt_encoder(features).items()}
        else:
            names = [o.name for o in self._ort_encoder.get_outputs()]
            got = self._ort_encoder.run(None, {"features": features.float().cpu().numpy()})
            out = {k: torch.from_numpy(v) for k, v in zip(names, got)}
        embeds = None
        if with_connector:
            if "audio_embeds" not in out:
                raise RuntimeError("this export has no connector (transcript-only)")
            embeds = out["audio_embeds"]
        return EncodedAudio(final=(out["cross_k"].numpy(), out["cross_v"].numpy()), audio_embeds=embeds)

    def transcribe(self, encoded: EncodedAudio, rows: list[int], max_new_tokens: int) -> list[str]:
        cross_k, cross_v = (np.ascontiguousarray(t[:, rows]) for t in encoded.final)
        c = self.manifest["decoder_cache"]

        def step(tokens: torch.Tensor, state):
            if state is None:
                empty = np.zeros((c["layers"], len(rows), c["heads"], 0, c["head_dim"]), dtype=np.float32)
                state = (empty, empty)
            logits, k, v = self._decoder.run(None, {"input_ids": tokens.long().numpy(), "cross_k": cross_k,
                                                    "cross_v": cross_v, "past_k": state[0], "past_v": state[1]})
            return torch.from_numpy(logits), (k, v)

        return self.decoding.decode(self.decoding.greedy(step, len(rows), max_new_tokens))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings from the export (the protocol's method; prompts reach the engine as ids)."""
        if self._embeddings is None:
            from safetensors.torch import load_file

            self._embeddings = load_file(str(self.export_dir / EMBEDDINGS_FILE))["weight"]
        return self._embeddings[ids.cpu()]

    def prompt_inputs(self, batch: PromptBatch, audio_embeds: torch.Tensor | None,
                      text_ids: list[list[int]]) -> PromptTableInputs:
        """A DeSTA batch as the engine takes it: ids with audio positions addressing a prompt table."""
        m = self.llm_manifest
        return prompt_table_inputs(batch, None if audio_embeds is None else audio_embeds.float().cpu(), text_ids,
                                   vocab_size=m["vocab_size"], prompt_size=m["prompt_size"],
                                   max_table_rows=m["max_prompt_embedding_table_size"], hidden_size=m["hidden_size"])

    def stream_tokens(self, *, attention_mask: torch.Tensor, input_ids: torch.Tensor | None,
                      inputs_embeds: "torch.Tensor | PromptTableInputs | None", eos_ids: set[int], opts: SamplingOptions,
                      times: StepTimes, cancelled: Callable[[], bool] | None = None,
                      prefix_ids: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Run the engine on ids (text-only prompts) or on `prompt_inputs`' output (prompts with audio)."""
        if opts.banned_ids:
            raise ValueError("the trtllm backend does not take banned_token_ids; use the torch or onnx backend")
        if isinstance(inputs_embeds, PromptTableInputs):
            prompt = inputs_embeds
        elif inputs_embeds is not None or input_ids is None:
            raise RuntimeError("the trtllm backend takes token ids and a prompt table, not input embeddings: "
                               "build prompts with audio through backend.prompt_inputs(batch, audio_embeds, text_ids)")
        else:
            prompt = PromptTableInputs([input_ids[b, attention_mask[b].bool()].to(torch.int32).cpu()
                                        for b in range(input_ids.shape[0])], None, self.llm_manifest["vocab_size"])
        lengths = [len(r) for r in prompt.input_ids]
        m = self.llm_manifest
        if max(lengths) > m["max_input_len"]:
            raise ValueError(f"a prompt of {max(lengths)} tokens exceeds the engine's {m['max_input_len']} "
                             "(desta-edge export trtllm --max-input-len)")
        if len(lengths) > m["max_batch"]:
            raise ValueError(f"{len(lengths)} conversations at once; the engine takes {m['max_batch']} (--max-batch)")
        max_new = min(opts.max_new_tokens, m["max_seq_len"] - max(lengths))
        t0 = time.perf_counter()
        outputs = self.runner.generate(prompt.input_ids, prompt_table=prompt.runner_table, prompt_tasks=prompt.prompt_tasks,
                                       **runner_kwargs(opts, eos_ids, len(lengths), max_new))

        def steps() -> Iterator[torch.Tensor]:
            for i, nxt in enumerate(runner_steps(outputs, lengths, eos_ids)):
                if i == 0:
                    times.prefill_ms = (time.perf_counter() - t0) * 1000  # prompt + first step: the runner does both
                    times.first_token_s = time.perf_counter()
                yield nxt
                if cancelled is not None and cancelled():
                    return

        return steps()

    def reset(self) -> None:
        """Nothing cached here (TensorRT-LLM manages its own KV cache)."""


def from_export(model_cls, path: str | os.PathLike, *, device=None, dtype=None, audio_features: bool | None = None,
                t0: float | None = None):
    """`DestaModel.from_pretrained(path, backend="trtllm")`: the model over a `TrtLlmBackend`."""
    from transformers import AutoTokenizer

    t0 = time.perf_counter() if t0 is None else t0
    if dtype not in (None, torch.float32):
        raise ValueError("the trtllm backend runs the precision its engines were built with; pass no dtype")
    d = Path(path)
    onnx_manifest, llm_manifest, config = check_trtllm_export(d)
    if audio_features and not onnx_manifest["has_connector"]:
        raise ValueError(f"{d} was exported without a connector (no trained adapter); audio_features=True needs one")
    backend = TrtLlmBackend(d, AutoTokenizer.from_pretrained(d / WHISPER_DIR), device=device)
    tokenizer = AutoTokenizer.from_pretrained(d / TRTLLM_DIR / llm_manifest["tokenizer_dir"])
    use_audio = onnx_manifest["has_connector"] if audio_features is None else bool(audio_features)
    model = model_cls(backend, config, tokenizer, audio_features=use_audio, name=str(d))
    model.load_ms = (time.perf_counter() - t0) * 1000
    return model

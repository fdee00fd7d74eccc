"""`DestaModel`: the DeSTA2.5-Audio pipeline behind the seed-compatible API.

    clips ──► log-mel ──► encoder (one pass) ──┬─► Q-Former connector ──► 64 audio embeddings ─┐
                                               └─► Whisper decoder ──► transcript ─► token embs ─┤
    messages ──► chat template ──► <start_audio>[placeholders]<end_audio> ──► splice ◄───────────┘
                                                                              └─► LLM ──► answer

This module orchestrates: it validates messages, loads audio, decides which clips need ASR
(a caller's `text` skips it; a clip without speech gets " "), assembles prompts and streams
text. The tensors live in a backend (`backends.py`); the PyTorch one is `torch_backend.py`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .audio import (N_FRAMES, SAMPLE_RATE, Audio, AudioError, LogMel, check_encoder_padding, encoder_frames,
                    has_speech, load_audio, prepare_audio)
from .backends import Backend, EncodedAudio
from .checkpoint import WEIGHTS_NAME, connector_state, is_checkpoint_dir, load_adapter, read_weights, save_checkpoint
from .config import DestaConfig
from .connector import ConnectorShape, QFormerConnector
from .generation import SamplingOptions, StepTimes, answer_loop_start, clock
from .hf import dtype_kwarg
from .lora import LoRA
from .onnx_backend import (
    LLM_TOKENIZER_DIR, WHISPER_DIR, OnnxBackend, OrtOptions, OrtProvider, is_onnx_export, read_manifest,
)
from .presets import BUNDLED_SCHEME, PRESETS, resolve_backbone
from .prompt import AudioRef, build_batch, collect_audios, normalize_batch, splice
from .silero import SPEECH_GAIN_DB, SPEECH_THRESHOLD
from .torch_backend import TorchBackend
from .whisper import MAX_TRANSCRIPT_TOKENS, WhisperFrontEnd

logger = logging.getLogger(__name__)

NO_SPEECH_TRANSCRIPT = " "  # what the reference gives a clip in which VAD finds no speech
WARM_UP_S = 1.0  # length of warm_up()'s synthetic clip
WARM_UP_TRANSCRIPT = "What time is it?"  # warm_up() gives its clip this transcript (its LLM pass) ...
WARM_UP_ASR_TOKENS = 4  # ... and runs the transcript decoder for this many steps on its own
STAGES = ("features", "encoder", "asr", "prefill", "first_token", "total")
_warned_transcript_only: set[str] = set()


@dataclass
class GenerationOutput:
    text: list[str]  # one answer per conversation
    audios: list[tuple[str, str]]  # (audio source, transcript) in order of appearance
    generated_ids: list[list[int]]  # answer token ids (without the end-of-turn token)
    timings_ms: dict[str, float] = field(default_factory=dict)  # see STAGES
    prompt_tokens: list[int] = field(default_factory=list)  # LLM input positions per conversation (padding excluded)
    looped: list[bool] = field(default_factory=list)  # the answer loop guard ended that answer


class Cancelled(Exception):
    """`stream(..., cancelled=)` said stop before the answer began (e.g. a speculative start
    whose speech resumed); nothing is wrong with the input."""


class AnswerStream:
    """Iterate to get answer text pieces as they are generated; fields fill in as it runs.

    `audios` is known before the first piece; `text`, `generated_ids`, `timings_ms` and `looped`
    are complete once iteration ends. `cancel()` stops generation before the next token.
    """

    def __init__(self, audios: list[tuple[str, str]], pieces: Callable[["AnswerStream"], Iterator[str]],
                 prompt_tokens: int = 0) -> None:
        self.audios = audios
        self.prompt_tokens = prompt_tokens  # LLM input positions (audio embeddings and transcripts included)
        self.text = ""
        self.generated_ids: list[int] = []
        self.timings_ms: dict[str, float] = {}
        self.cancelled = False
        self.looped = False  # the loop guard ended the answer after the first copy of a repeated block
        self._it = pieces(self)

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[str]:
        return self._it

    def __next__(self) -> str:
        return next(self._it)


def _cut_loop(ids: list[int]) -> bool:
    """If the answer so far ends in a loop (`answer_loop_start`), keep its first copy in `ids` and say so."""
    if (k := answer_loop_start(ids)) is None:
        return False
    logger.info("the answer repeats itself; ended after the first copy (%d tokens kept)", k)
    del ids[k:]
    return True


@dataclass
class _Prepared:
    batch_size: int
    attention_mask: torch.Tensor
    input_ids: torch.Tensor | None  # text-only batches go in as ids (exactly the backbone's path)
    inputs_embeds: torch.Tensor | None
    prefix_ids: torch.Tensor | None  # [1, P] tokens before the first clip, when the prefix cache applies
    lora_start: torch.Tensor | None  # [B] position id where LoRA begins per row; None: LoRA off
    audios: list[tuple[str, str]]
    timings_ms: dict[str, float]
    t0: float


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, config: DestaConfig | None = None) -> torch.dtype:
    """float32 on the CPU. On CUDA bfloat16 (float16 without it), except for a model on the
    embedded default's bundled backbones (180 M parameters), where float32 costs 0.4 GB more and
    wins: on an H200 it ran the spoken questions 1.41x faster end to end than bfloat16 and answered
    all 10 as the CPU does, where bfloat16 changed 2 answers (README, "On a GPU")."""
    if device.type != "cuda":
        return torch.float32
    if config is not None and all(m.startswith(BUNDLED_SCHEME) for m in (config.llm_model_id, config.encoder_model_id)):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class DestaModel:
    """A DeSTA2.5-Audio model ready for inference. Build with `from_pretrained`."""

    def __init__(
        self,
        backend: TorchBackend | OnnxBackend,
        config: DestaConfig,
        tokenizer,
        *,
        audio_features: bool = True,
        name: str = "<components>",
        load_ms: float = 0.0,
    ) -> None:
        self.backend = backend
        self.config = config
        self.tokenizer = tokenizer
        self.audio_features = audio_features
        self.name = name
        self.load_ms = load_ms
        self.backend_reason: str | None = None  # why backend="auto" chose this backend
        self.features = LogMel(backend.n_mels)
        self.placeholder_id = _single_token_id(tokenizer, config.placeholder_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = backend.eos_ids(tokenizer)
        # reuse the key/value cache of the prompt up to the first clip (single conversations
        # with audio; text-only prompts always run whole, exactly as the backbone would)
        self.use_prefix_cache = True
        self.encoder_padding_s: float | None = None  # see set_encoder_padding
        # the speech check: a clip with less Silero speech than this, quiet audio also heard raised by
        # up to speech_gain_db, gets no transcript (" ")
        self.speech_threshold, self.speech_gain_db = SPEECH_THRESHOLD, SPEECH_GAIN_DB
        self._embedding_cache: dict[tuple[int, bytes], torch.Tensor] | None = None  # see audio_embedding_cache

    @contextmanager
    def audio_embedding_cache(self) -> Iterator[None]:
        """Within this block, a clip that comes again with its transcript given (no ASR needed)
        reuses its audio embeddings instead of running the encoder again: `eval` asks every clip
        several questions. Keyed by the samples and the encoder window; emptied when the block ends."""
        self._embedding_cache = {}
        try:
            yield
        finally:
            self._embedding_cache = None

    def set_encoder_padding(self, seconds: float | None) -> None:
        """Let the encoder read each batch's longest clip plus `seconds` of silence instead of the
        whole 30 s window (None, the default and the reference). About 4x less encoder work for a
        short query, but the connector was trained on the full window: measured costs in the
        README ("Latency"). Backends whose encoder takes only the full window refuse it."""
        check_encoder_padding(seconds)
        if seconds is not None and getattr(self.backend, "full_window_only", False):
            raise ValueError(f"the {self.backend_name} encoder takes only the full 30 s window "
                             f"({N_FRAMES} frames): {self.backend.full_window_only}")
        self.encoder_padding_s = seconds

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "tiny",
        *,
        backend: str | Backend = Backend.TORCH,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        whisper_dtype: torch.dtype | None = None,
        audio_features: bool | None = None,
        progress: bool = True,
        ort_provider: str | OrtProvider | None = None,
        ort_options: OrtOptions | None = None,
        encoder_padding_s: float | None = None,
    ) -> "DestaModel":
        """Load a preset name ("tiny"), a checkpoint directory, or a hub id.

        backend: "torch", "onnx" (an export directory), or "auto": the fastest one that can run
        `name_or_path` here (`choose_backend`); `model.backend_name` says which was chosen.
        audio_features: None = use the connector when the model has a trained one; False =
        the transcript-only ablation (the LLM sees the transcript, no audio embeddings).
        ort_provider: onnx backend only: "cpu", "cuda" or "tensorrt" (default: by device);
        ort_options: the rest of its ONNX Runtime settings (`OrtOptions`).
        whisper_dtype: torch backend only: run the Whisper encoder and transcript decoder in this
        dtype while the connector and LLM keep `dtype` (e.g. torch.bfloat16 on a CPU with AMX).
        encoder_padding_s: see `set_encoder_padding` (None: the full 30 s window).
        """
        check_encoder_padding(encoder_padding_s)  # a bad value fails before the slow load
        model = cls._load(name_or_path, backend=backend, device=device, dtype=dtype, whisper_dtype=whisper_dtype,
                          audio_features=audio_features, progress=progress, ort_provider=ort_provider,
                          ort_options=ort_options)
        model.set_encoder_padding(encoder_padding_s)
        return model

    @classmethod
    def _load(cls, name_or_path, *, backend, device, dtype, whisper_dtype, audio_features, progress, ort_provider,
              ort_options) -> "DestaModel":
        t0 = time.perf_counter()
        name = os.fspath(name_or_path)
        chosen, reason = Backend.parse(backend), None
        if chosen is Backend.AUTO:
            chosen, device, reason = choose_backend(name, device, ort_provider)
            logger.info("backend auto: %s (%s)", chosen.value, reason)
        if whisper_dtype is not None and chosen is not Backend.TORCH:
            raise ValueError(f"whisper_dtype applies to the torch backend, not {chosen.value} (its graphs are float32)")
        if chosen is Backend.TRTLLM:
            from .trtllm_backend import from_export

            return from_export(cls, name, device=device, dtype=dtype, audio_features=audio_features, t0=t0)
        if chosen is Backend.ONNX:
            if ort_provider is not None:
                ort_options = replace(ort_options or OrtOptions(), provider=ort_provider)
            model = _from_onnx_export(cls, name, device=device, dtype=dtype, audio_features=audio_features, t0=t0,
                                      options=ort_options)
            model.backend_reason = reason
            return model
        if ort_provider is not None or ort_options is not None:
            raise ValueError("ort_provider / ort_options apply to the onnx backend (an export directory)")
        if is_onnx_export(name):
            raise ValueError(f"{name} is an ONNX export: load it with backend='onnx' (or 'auto')")
        config, weights, base_dir = _resolve(name)
        if weights is None:
            if audio_features:
                raise ValueError(f"{name} has no trained adapter; pass audio_features=False")
            if name not in _warned_transcript_only:
                _warned_transcript_only.add(name)
                logger.warning(
                    "%s has no trained adapter yet: answering from the transcript alone "
                    "(no audio embeddings reach the LLM)", name
                )
            audio_features = False
        dev = torch.device(device) if device is not None else default_device()
        dt = dtype or default_dtype(dev, config)
        whisper, whisper_tok = _load_whisper(resolve_backbone(config.encoder_model_id, base_dir=base_dir, progress=progress), dt)
        llm, llm_tok = _load_llm(resolve_backbone(config.llm_model_id, base_dir=base_dir, progress=progress), dt)
        model = cls.from_components(
            config, whisper, whisper_tok, llm, llm_tok,
            connector_weights=weights, audio_features=audio_features is not False, name=name,
        )
        model.to(dev, dt)
        if whisper_dtype is not None:
            model.backend.set_whisper_dtype(whisper_dtype)
        model.load_ms = (time.perf_counter() - t0) * 1000
        model.backend_reason = reason
        return model

    @classmethod
    def from_components(
        cls,
        config: DestaConfig,
        whisper,
        whisper_tokenizer,
        llm,
        llm_tokenizer,
        *,
        connector_weights: dict[str, torch.Tensor] | None = None,
        audio_features: bool = True,
        name: str = "<components>",
    ) -> "DestaModel":
        """Assemble from loaded backbones (tests and training build models this way).

        With `audio_features` and no weights, the connector (and the LoRA of a `use_lora`
        config) is freshly initialized (training).
        """
        front = WhisperFrontEnd(whisper, whisper_tokenizer, config.taps(whisper.config.encoder_layers))
        connector = lora = None
        if audio_features or connector_weights is not None:
            shape = ConnectorShape(
                d_encoder=front.d_model,
                n_heads=front.n_heads,
                d_llm=llm.config.hidden_size,
                n_taps=len(front.taps),
                prompt_size=config.prompt_size,
                n_layers=config.qformer_num_hidden_layers,
                input_norm=config.connector_input_norm,
            )
            connector = QFormerConnector(shape)
            lora = LoRA(llm, scope=config.lora_scope) if config.use_lora else None
            if connector_weights is not None:
                load_adapter(connector, connector_weights, source=name, lora=lora)
        for module in (whisper, llm):
            module.eval().requires_grad_(False)
        for module in (connector, lora):
            if module is not None:
                module.eval()
        backend = TorchBackend(front, connector, llm, lora)
        return cls(backend, config, llm_tokenizer, audio_features=audio_features, name=name)

    def attach_lora(self, scope: str) -> LoRA:
        """Give a model without LoRA a fresh one (a no-op until trained): training adds it this way."""
        if not isinstance(self.backend, TorchBackend):
            raise ValueError(f"LoRA needs the torch backend, not {self.backend_name}")
        if self.backend.lora is not None:
            raise ValueError(f"{self.name} already has a LoRA (scope {self.backend.lora.scope!r})")
        self.config = replace(self.config, use_lora=True, lora_scope=scope)
        self.backend.lora = LoRA(self.backend.llm_model, scope=scope)
        return self.backend.lora

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "DestaModel":
        self.backend.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def backend_name(self) -> str:
        """The engine that runs the model: "torch" or "onnx" (what backend="auto" picked)."""
        if isinstance(self.backend, OnnxBackend):
            return Backend.ONNX.value
        if isinstance(self.backend, TorchBackend):
            return Backend.TORCH.value
        return getattr(self.backend, "backend_name", type(self.backend).__name__)

    @property
    def backend_detail(self) -> str:
        """Where it runs: the torch device and dtype, or ONNX Runtime's execution providers."""
        if isinstance(self.backend, OnnxBackend):
            return ", ".join(self.backend.providers) + (" + IOBinding" if self.backend.io_binding else "")
        name = lambda dt: str(dt).removeprefix("torch.")  # noqa: E731
        dtype = getattr(self.backend, "dtype", None)
        detail = f"{self.device}" + (f" {name(dtype)}" if dtype is not None else "")
        whisper = getattr(self.backend, "whisper_dtype", dtype)
        return detail + (f", whisper {name(whisper)}" if whisper != dtype else "")

    @property
    def connector(self) -> QFormerConnector | None:
        return getattr(self.backend, "connector", None)

    @property
    def has_connector(self) -> bool:
        """Whether this model can make audio embeddings: a trained connector in PyTorch, or one
        inside an export's encoder graph (an ONNX export has no torch connector)."""
        return self.connector is not None or bool(getattr(self.backend, "manifest", {}).get("has_connector"))

    @property
    def lora(self) -> LoRA | None:
        return getattr(self.backend, "lora", None)

    def save_pretrained(self, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write the official layout: config.json + model.safetensors (connector, and LoRA if any)."""
        if self.connector is None:
            raise ValueError("this model has no connector to save")
        return save_checkpoint(out_dir, self.config, self.connector, lora=self.lora, dtype=dtype)

    def connector_state_dict(self) -> dict[str, torch.Tensor]:
        if self.connector is None:
            raise ValueError("this model has no connector")
        return connector_state(self.connector)

    # ------------------------------------------------------------------ inference

    def generate(
        self,
        messages: list,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        banned_token_ids: Sequence[Sequence[int]] | None = None,
        stop_loops: bool = True,
    ) -> GenerationOutput:
        """Answer one conversation or a batch of them (the seed's message format).

        `banned_token_ids`: per conversation, LLM token ids that are never generated (constrained
        decoding, e.g. datagen keeping an answer consistent with its clip's labels).
        `stop_loops`: end an answer that repeats itself at its first copy (`answer_loop_start`).
        """
        banned = tuple(tuple(int(t) for t in row) for row in banned_token_ids or ())
        opts = SamplingOptions(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                               banned_ids=banned)
        prep = self._prepare(normalize_batch(messages))
        if banned and len(banned) != prep.batch_size:
            raise ValueError(f"banned_token_ids has {len(banned)} rows for {prep.batch_size} conversations")
        times = StepTimes()
        rows: list[list[int]] = [[] for _ in range(prep.batch_size)]
        done = [False] * prep.batch_size
        looped = [False] * prep.batch_size
        for nxt in self._tokens(prep, opts, times):
            for i, tok in enumerate(nxt.tolist()):
                if done[i] or tok in self.eos_ids:
                    done[i] = True
                    continue
                rows[i].append(tok)
                if stop_loops and _cut_loop(rows[i]):
                    done[i] = looped[i] = True
            if all(done):
                break
        timings = self._finish_timings(prep, times)
        text = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return GenerationOutput(text=text, audios=prep.audios, generated_ids=rows, timings_ms=timings,
                                prompt_tokens=prep.attention_mask.sum(1).tolist(), looped=looped)

    def warm_up(self, conversation: Callable[[np.ndarray], list] | None = None) -> float:
        """Run every stage once on a short synthetic clip; returns the milliseconds it took.

        The first call of each stage pays one-off costs that later calls do not: on CUDA, loading
        kernels and cuDNN's choice of algorithms (on an H200, the encoder, transcript and prefill of
        the first spoken request of a listen run took 1.2 s together, those of later ones 0.15-0.2 s),
        and on any device the allocator's growth. An always-on listener calls this before
        it opens the microphone. `conversation(samples)`: the messages of a request with that clip
        (default: a user turn with the clip and a question); its prompt prefix's key/value cache is
        kept for the real requests that share it.
        """
        t0 = time.perf_counter()
        samples = (0.05 * np.random.default_rng(0).standard_normal(int(WARM_UP_S * SAMPLE_RATE))).astype(np.float32)
        if conversation is None:
            conversation = lambda x: [{"role": "user", "content": f"{self.config.audio_locator}\nWhat is this?",  # noqa: E731
                                       "audios": [{"audio": (x, SAMPLE_RATE), "text": None}]}]
        messages = conversation(samples)
        for m in messages:  # transcript given: the LLM pass does not wait on a transcript of noise
            for a in m.get("audios") or ():
                a["text"] = WARM_UP_TRANSCRIPT
        self.generate(messages, max_new_tokens=2)  # features, encoder + connector, prefill, a decode step
        has_speech(samples)  # the speech check (its weights are read at the first call)
        feats = self.features([samples], encoder_frames(len(samples), self.encoder_padding_s))
        self.backend.transcribe(self.backend.encode(feats, with_connector=False), [0], WARM_UP_ASR_TOKENS)
        return (clock(self.device) - t0) * 1000

    def stream(
        self,
        messages: list,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        cancelled: Callable[[], bool] | None = None,
        stop_loops: bool = True,
    ) -> AnswerStream:
        """Answer one conversation, yielding text pieces as tokens are generated.

        Audio is loaded, encoded and transcribed before this returns (so errors surface here
        and `stream.audios` is known); the LLM runs as the stream is iterated.
        cancelled: asked between the stages before this returns (after the features, the encoder
        and the transcript); True raises `Cancelled`, so abandoned work stops early.
        stop_loops: end an answer that repeats itself (`answer_loop_start`); the repeats already
        streamed stay streamed, and `stream.text` keeps only the first copy.
        """
        conversations = normalize_batch(messages)
        if len(conversations) != 1:
            raise ValueError(f"stream() takes one conversation, got a batch of {len(conversations)}; use generate()")
        opts = SamplingOptions(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
        prep = self._prepare(conversations, cancelled)

        def pieces(stream: AnswerStream) -> Iterator[str]:
            times = StepTimes()
            emitted = ""
            for nxt in self._tokens(prep, opts, times, cancelled=lambda: stream.cancelled):
                tok = int(nxt[0])
                if tok in self.eos_ids:
                    break
                stream.generated_ids.append(tok)
                if stop_loops and _cut_loop(stream.generated_ids):
                    stream.looped = True
                    break
                text = self.tokenizer.decode(stream.generated_ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                    continue
                piece, emitted = text[len(emitted) :], text
                stream.text = text
                if piece:
                    yield piece
            stream.text = self.tokenizer.decode(stream.generated_ids, skip_special_tokens=True)
            if len(stream.text) > len(emitted):
                yield stream.text[len(emitted) :]
            stream.timings_ms = self._finish_timings(prep, times)

        return AnswerStream(prep.audios, pieces, prompt_tokens=int(prep.attention_mask.sum()))

    # ------------------------------------------------------------------ pipeline

    def _prepare(self, conversations: list[list[dict]], cancelled: Callable[[], bool] | None = None) -> _Prepared:
        def stop_if_cancelled(stage: str) -> None:
            if cancelled is not None and cancelled():
                raise Cancelled(f"cancelled after {stage}")

        t0 = time.perf_counter()
        timings = {k: 0.0 for k in ("features", "encoder", "asr")}
        refs = collect_audios(conversations, self.config.audio_locator)
        clips = [_load_clip(r) for r in refs]
        transcripts: list[str | None] = [r.text for r in refs]
        need_asr = []
        for i, (ref, clip) in enumerate(zip(refs, clips)):
            if ref.text is None:
                if has_speech(clip.samples, threshold=self.speech_threshold, gain_db=self.speech_gain_db):
                    need_asr.append(i)
                else:
                    transcripts[i] = NO_SPEECH_TRANSCRIPT
        use_connector = self.audio_features and bool(refs)
        audio_embeds, encode_idx, cache = None, [], None
        if use_connector or need_asr:
            encode_idx = list(range(len(clips))) if use_connector else need_asr
            frames = encoder_frames(max(len(clips[i].samples) for i in encode_idx), self.encoder_padding_s)
            cache = self._embedding_cache if use_connector and not need_asr else None
            if cache is not None:  # encode only the clips not seen before in this window
                keys = [(frames, hashlib.sha1(clip.samples.tobytes()).digest()) for clip in clips]
                encode_idx = [i for i, k in enumerate(keys) if k not in cache]
        if encode_idx:
            t = time.perf_counter()
            feats = self.features([clips[i].samples for i in encode_idx], frames)
            timings["features"] = (time.perf_counter() - t) * 1000
            stop_if_cancelled("features")
            t = time.perf_counter()
            enc: EncodedAudio = self.backend.encode(feats, with_connector=use_connector)
            timings["encoder"] = (clock(self.device) - t) * 1000
            audio_embeds = enc.audio_embeds
            stop_if_cancelled("the encoder")
            if need_asr:
                t = time.perf_counter()
                rows = [encode_idx.index(i) for i in need_asr]
                texts = self.backend.transcribe(enc, rows, MAX_TRANSCRIPT_TOKENS)
                timings["asr"] = (time.perf_counter() - t) * 1000
                for i, text in zip(need_asr, texts):
                    transcripts[i] = text
                stop_if_cancelled("the transcript")
        if cache is not None:
            cache.update((keys[i], audio_embeds[row : row + 1]) for row, i in enumerate(encode_idx))
            audio_embeds = torch.cat([cache[k] for k in keys])
        text_ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in transcripts]
        n_audio = self.config.prompt_size if use_connector else 0
        batch = build_batch(
            self.tokenizer,
            conversations,
            audio_locator=self.config.audio_locator,
            placeholder_id=self.placeholder_id,
            pad_id=self.pad_id,
            spans=[(n_audio, len(ids)) for ids in text_ids],
        )
        audios = [(clip.source, text or "") for clip, text in zip(clips, transcripts)]
        lora_start = None
        if self.lora is not None and self.audio_features:  # the ablation runs the plain backbone
            lora_start = self.lora.starts(batch.attention_mask, batch.splices)
        if not refs:
            return _Prepared(len(conversations), batch.attention_mask, batch.input_ids, None, None, lora_start,
                             audios, timings, t0)
        if hasattr(self.backend, "prompt_inputs"):  # TensorRT-LLM: ids + a prompt table, not input embeddings
            table = self.backend.prompt_inputs(batch, audio_embeds, text_ids)
            return _Prepared(len(conversations), batch.attention_mask, None, table, None, None, audios, timings, t0)
        embeds = self.backend.embed(batch.input_ids)
        text_embeds = [self.backend.embed(torch.tensor(ids, dtype=torch.long)) for ids in text_ids]
        embeds = splice(embeds, batch.splices, audio_embeds, text_embeds)
        prefix = None
        if self.use_prefix_cache and len(conversations) == 1 and batch.splices[0].start > 0:
            prefix = batch.input_ids[:, : batch.splices[0].start]
        return _Prepared(len(conversations), batch.attention_mask, None, embeds, prefix, lora_start, audios, timings,
                         t0)

    def _tokens(self, prep: _Prepared, opts: SamplingOptions, times: StepTimes, cancelled=None) -> Iterator[torch.Tensor]:
        lora = {} if prep.lora_start is None else {"lora_start": prep.lora_start}  # only the torch backend has LoRA
        return self.backend.stream_tokens(
            attention_mask=prep.attention_mask,
            input_ids=prep.input_ids,
            inputs_embeds=prep.inputs_embeds,
            eos_ids=self.eos_ids,
            opts=opts,
            times=times,
            cancelled=cancelled,
            prefix_ids=prep.prefix_ids,
            **lora,
        )

    def _finish_timings(self, prep: _Prepared, times: StepTimes) -> dict[str, float]:
        out = dict(prep.timings_ms)
        out["prefill"] = times.prefix_ms + times.prefill_ms
        first = times.first_token_s if times.first_token_s is not None else time.perf_counter()
        out["first_token"] = (first - prep.t0) * 1000  # request start -> first answer token
        out["total"] = (time.perf_counter() - prep.t0) * 1000
        return {k: round(out[k], 2) for k in STAGES}


# ---------------------------------------------------------------------- helpers


def _load_clip(ref: AudioRef) -> Audio:
    a = ref.audio
    if isinstance(a, Audio):
        return a
    if isinstance(a, str):
        return load_audio(a)
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], np.ndarray):
        return prepare_audio(a[0], a[1])
    raise AudioError(
        f"conversation {ref.conversation}: 'audio' must be a file path, an Audio object or a "
        f"(samples, sample_rate) tuple, got {type(a).__name__}"
    )


def _single_token_id(tokenizer, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"placeholder_token {token!r} must be one token of the LLM vocabulary; it encodes to {ids}")
    return ids[0]


def choose_backend(name: str, device: str | torch.device | None,
                   ort_provider: str | OrtProvider | None = None) -> tuple[Backend, torch.device, str]:
    """`backend="auto"`: the fastest backend that can run `name` on this machine, its device, and why.

    - An ONNX export directory runs on ONNX Runtime: it is the only engine that reads one, and
      on the CPU the faster one (README: fp32 1.06-1.13x PyTorch eager end to end on the 2-core
      CPU, with the same outputs). Its
      provider is CUDA when there is a GPU and onnxruntime has the CUDA provider, else the CPU.
      TensorRT is never picked on its own: its first load builds engines for minutes.
    - Anything else (a preset, checkpoint or hub id) runs on PyTorch, on CUDA when available.
      ONNX Runtime would be faster on the CPU but needs an export (`desta-edge export onnx`).
    """
    if is_onnx_export(name):
        if device is not None:
            dev = torch.device(device)
        else:
            from .onnx_backend import _onnxruntime

            has_cuda_ep = OrtProvider.CUDA.ep_name in _onnxruntime().get_available_providers()
            dev = torch.device("cuda" if torch.cuda.is_available() and has_cuda_ep else "cpu")
        if ort_provider is not None:
            where = f"provider {OrtProvider.parse(ort_provider).value} as asked"
        else:
            where = "CUDA provider" if dev.type == "cuda" else "CPU provider"
        return Backend.ONNX, dev, f"ONNX export directory: ONNX Runtime, {where}"
    if ort_provider is not None:
        raise ValueError(f"ort_provider needs an ONNX export directory; {name} is not one")
    dev = torch.device(device) if device is not None else default_device()
    hint = "" if dev.type == "cuda" else "; an ONNX export of it (desta-edge export onnx) runs faster on the CPU"
    return Backend.TORCH, dev, f"not an ONNX export: PyTorch on {dev.type}{hint}"


def _from_onnx_export(cls, path: str, *, device, dtype, audio_features, t0: float,
                      options: OrtOptions | None = None) -> "DestaModel":
    """Load a self-contained export directory into the ONNX Runtime backend."""
    from transformers import AutoTokenizer

    if not is_onnx_export(path):
        raise FileNotFoundError(
            f"{path}: not an ONNX export directory; create one with `desta-edge export onnx --model NAME --out {path}`"
        )
    if dtype not in (None, torch.float32):
        raise ValueError("the onnx backend runs the exported float32 graphs; dtype cannot be changed at load time")
    manifest = read_manifest(path)
    if audio_features and not manifest["has_connector"]:
        raise ValueError(f"{path} was exported without a connector (no trained adapter); audio_features=True needs one")
    dev = torch.device(device) if device is not None else default_device()
    backend = OnnxBackend(path, manifest, dev, AutoTokenizer.from_pretrained(Path(path) / WHISPER_DIR), options)
    config = DestaConfig.from_json(Path(path) / "config.json")
    use_audio = manifest["has_connector"] if audio_features is None else bool(audio_features)
    model = cls(backend, config, AutoTokenizer.from_pretrained(Path(path) / LLM_TOKENIZER_DIR),
                audio_features=use_audio, name=path)
    model.load_ms = (time.perf_counter() - t0) * 1000
    return model


def _resolve(name: str) -> tuple[DestaConfig, dict | None, Path | None]:
    """A preset, checkpoint dir or hub id -> (config, connector weights or None, base dir)."""
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.adapter_dir is None:
            return preset.config, None, None
        name = str(preset.adapter_dir)
    path = Path(name)
    if not is_checkpoint_dir(path):
        if path.exists() or name.startswith((".", "/", "~")):
            raise FileNotFoundError(
                f"{name}: not a preset ({', '.join(PRESETS)}) or a checkpoint directory with config.json"
            )
        path = _download(name)
    config = DestaConfig.from_json(path / "config.json")
    weights_file = path / WEIGHTS_NAME
    weights = read_weights(weights_file) if weights_file.exists() else None
    return config, weights, path


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["config.json", WEIGHTS_NAME]))
    except Exception as e:
        raise RuntimeError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"Use a preset ({', '.join(PRESETS)}), a local checkpoint directory, or a machine that reaches the hub."
        ) from e


def _load_whisper(path: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(path, **{dtype_kwarg(): dtype})
    return model, AutoTokenizer.from_pretrained(path)


def _load_llm(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, **{dtype_kwarg(): dtype})
    return model, AutoTokenizer.from_pretrained(path)

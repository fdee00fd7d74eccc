"""The PyTorch backend (CPU or CUDA): the reference computation every other backend must match.

Module names follow the official checkpoint: `perception.whisper` (frozen Whisper),
`perception.connector` (the trained Q-Former), `llm_model` (the frozen LLM), so
`connector_state(self.perception.connector)` is exactly what a checkpoint holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .backends import EncodedAudio
from .connector import QFormerConnector
from .generation import PrefixCache, SamplingOptions, StepTimes, generate_stream
from .whisper import WhisperFrontEnd


class Perception(nn.Module):
    def __init__(self, whisper: WhisperFrontEnd, connector: QFormerConnector | None) -> None:
        super().__init__()
        self.whisper = whisper
        self.connector = connector


class TorchBackend(nn.Module):
    def __init__(self, whisper: WhisperFrontEnd, connector: QFormerConnector | None, llm: nn.Module) -> None:
        super().__init__()
        self.perception = Perception(whisper, connector)
        self.llm_model = llm
        self.n_mels = whisper.n_mels
        self._prefix = PrefixCache()

    @property
    def device(self) -> torch.device:
        return next(self.llm_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm_model.parameters()).dtype

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        whisper = self.perception.whisper
        enc_dtype = next(whisper.parameters()).dtype
        out = whisper.encode(features.to(self.device, enc_dtype))
        embeds = None
        if with_connector:
            if self.perception.connector is None:
                raise RuntimeError("this model has no connector (transcript-only)")
            with torch.inference_mode():
                embeds = self.perception.connector(out.taps)
        return EncodedAudio(final=out.final, audio_embeds=embeds)

    def transcribe(self, final: torch.Tensor, max_new_tokens: int) -> list[str]:
        whisper = self.perception.whisper
        return whisper.decode(whisper.transcribe_ids(final, max_new_tokens=max_new_tokens))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.llm_model.get_input_embeddings()(ids.to(self.device))

    def stream_tokens(
        self,
        *,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        eos_ids: set[int],
        opts: SamplingOptions,
        times: StepTimes,
        cancelled: Callable[[], bool] | None = None,
        prefix_ids: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        past = None
        if prefix_ids is not None:
            t0 = time.perf_counter()
            past = self._prefix.get(self.llm_model, prefix_ids.to(self.device))
            times.prefix_ms = (time.perf_counter() - t0) * 1000
            p = prefix_ids.shape[1]
            input_ids = None if input_ids is None else input_ids[:, p:]
            inputs_embeds = None if inputs_embeds is None else inputs_embeds[:, p:]
        return generate_stream(
            self.llm_model,
            attention_mask=attention_mask.to(self.device),
            input_ids=None if input_ids is None else input_ids.to(self.device),
            inputs_embeds=inputs_embeds,
            eos_ids=eos_ids,
            opts=opts,
            times=times,
            cancelled=cancelled,
            past=past,
        )

    def reset(self) -> None:
        """Forget cached state (the prompt-prefix key/value cache)."""
        self._prefix.reset()

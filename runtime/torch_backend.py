"""The PyTorch backend (CPU or CUDA): the reference computation every other backend must match.

Module names follow the official checkpoint: `perception.whisper` (frozen Whisper),
`perception.connector` (the trained Q-Former), `llm_model` (the frozen LLM), so
`connector_state(self.perception.connector)` is exactly what a checkpoint holds. An optional
`lora` (runtime/lora.py) adds low-rank updates to the LLM's attention through hooks, only while
a call passes `lora_start`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .backends import WHISPER_DTYPES, EncodedAudio
from .connector import QFormerConnector
from .generation import PrefixCache, SamplingOptions, StepTimes, eos_ids_of, last_logits, stream_with_prefix
from .lora import LoRA
from .whisper import WhisperFrontEnd

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX). Without them PyTorch
    emulates bf16, and a 512x512 matmul took 19x longer than in fp32 on an AVX2-only AMD EPYC."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Perception(nn.Module):
    def __init__(self, whisper: WhisperFrontEnd, connector: QFormerConnector | None) -> None:
        super().__init__()
        self.whisper = whisper
        self.connector = connector


class TorchBackend(nn.Module):
    def __init__(self, whisper: WhisperFrontEnd, connector: QFormerConnector | None, llm: nn.Module,
                 lora: LoRA | None = None) -> None:
        super().__init__()
        self.perception = Perception(whisper, connector)
        self.llm_model = llm
        self.lora = lora
        self.n_mels = whisper.n_mels
        self._prefix = PrefixCache()

    @property
    def device(self) -> torch.device:
        return next(self.llm_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm_model.parameters()).dtype

    @property
    def whisper_dtype(self) -> torch.dtype:
        return next(self.perception.whisper.parameters()).dtype

    def set_whisper_dtype(self, dtype: torch.dtype) -> None:
        """Run Whisper (encoder + transcript decoder) in `dtype`; the connector and LLM keep theirs.

        bfloat16 on a CPU with native bf16 matrix units (AMX / AVX512-BF16) runs the encoder about
        3x faster; elsewhere on the CPU it is emulated and slower, which is logged.
        """
        if dtype not in WHISPER_DTYPES.values():
            raise ValueError(f"whisper dtype must be one of {sorted(WHISPER_DTYPES)}, got {dtype}")
        if self.device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
            logger.warning("this CPU has no native bfloat16 support: Whisper in bfloat16 will be slower, not faster")
        if self.device.type == "cpu" and dtype == torch.float16:
            raise ValueError("float16 Whisper is for GPUs; on the CPU use bfloat16")
        self.perception.whisper.to(dtype)

    def encode(self, features: torch.Tensor, *, with_connector: bool) -> EncodedAudio:
        whisper = self.perception.whisper
        out = whisper.encode(features.to(self.device, self.whisper_dtype))
        embeds = None
        if with_connector:
            if self.perception.connector is None:
                raise RuntimeError("this model has no connector (transcript-only)")
            dtype = next(self.perception.connector.parameters()).dtype
            with torch.inference_mode():
                embeds = self.perception.connector([t.to(dtype) for t in out.taps])
        return EncodedAudio(final=out.final, audio_embeds=embeds)

    def transcribe(self, encoded: EncodedAudio, rows: list[int], max_new_tokens: int) -> list[str]:
        whisper = self.perception.whisper
        return whisper.decode(whisper.transcribe_ids(encoded.final[rows], max_new_tokens=max_new_tokens))

    @property
    def connector(self) -> QFormerConnector | None:
        return self.perception.connector

    def eos_ids(self, tokenizer) -> set[int]:
        return eos_ids_of(self.llm_model.generation_config, tokenizer)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.llm_model.get_input_embeddings()(ids.to(self.device))

    def llm_logits(self, input_ids: torch.Tensor, prefix_len: int, cache: PrefixCache) -> torch.Tensor:
        """The plain backbone's next-token logits [V] after `input_ids` [1, L] (no LoRA)."""
        return last_logits(self.llm_model, cache, input_ids.to(self.device), prefix_len)

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
        lora_start: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """`lora_start` [B]: LoRA from that position id on in each row (see `LoRA.active`)."""
        if lora_start is None:
            return self._stream(attention_mask, input_ids, inputs_embeds, eos_ids, opts, times, cancelled, prefix_ids)
        if self.lora is None:
            raise ValueError("lora_start given, but this model has no LoRA")
        # the prefix cache is shared with calls without LoRA only where LoRA cannot reach the
        # prefix (scope "audio" starts after it)
        prefix_len = 0 if prefix_ids is None else prefix_ids.shape[1]
        tag = "lora" if int(lora_start.min()) < prefix_len else None
        with self.lora.active(lora_start):  # the prefix and the prefill run in this call
            tokens = self._stream(attention_mask, input_ids, inputs_embeds, eos_ids, opts, times, cancelled,
                                  prefix_ids, tag)
        return self.lora.over(tokens, lora_start)

    def _stream(self, attention_mask, input_ids, inputs_embeds, eos_ids, opts, times, cancelled, prefix_ids,
                prefix_tag: str | None = None) -> Iterator[torch.Tensor]:
        return stream_with_prefix(
            self.llm_model,
            self._prefix,
            attention_mask=attention_mask.to(self.device),
            input_ids=None if input_ids is None else input_ids.to(self.device),
            inputs_embeds=inputs_embeds,
            eos_ids=eos_ids,
            opts=opts,
            times=times,
            cancelled=cancelled,
            prefix_ids=None if prefix_ids is None else prefix_ids.to(self.device),
            prefix_tag=prefix_tag,
        )

    def reset(self) -> None:
        """Forget cached state (the prompt-prefix key/value cache)."""
        self._prefix.reset()

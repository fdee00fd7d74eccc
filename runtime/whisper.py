"""Whisper as DeSTA uses it: one encoder pass that feeds both the connector and the transcript.

`encode` runs the encoder layers by hand so it can keep the raw outputs of the tapped layers
(before the encoder's final LayerNorm, as the connector was trained) and the final,
normalized states (what Whisper's decoder cross-attends to) from the *same* pass. `transcribe`
is a greedy decoder loop over those final states with a key/value cache; the reference instead
calls `whisper.generate(input_features)`, which runs the encoder a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import generation

logger = logging.getLogger(__name__)

MAX_TRANSCRIPT_TOKENS = 128  # the reference transcribes with max_new_tokens=128
# Greedy Whisper can fall into a loop ("this way, this way, this way, ...") until the token cap,
# costing a second of decoding and a garbage transcript. A block of tokens repeated back to back
# ends the transcript at its first occurrence: a long block (a whole phrase) on its second
# occurrence, a short one (a word or two, which people do repeat) on its third.
LOOP_LONG_BLOCK = 6  # tokens: a block at least this long is a loop when it appears twice in a row
LOOP_SHORT_REPEATS = 3  # a shorter block (2+ tokens) is a loop when it appears this many times in a row


@dataclass
class EncoderOutput:
    taps: list[torch.Tensor]  # n_taps x [B, T, d_enc], raw outputs of the tapped layers
    final: torch.Tensor  # [B, T, d_enc], after the encoder's final LayerNorm


StepFn = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]  # (tokens [B, S], state) -> (logits [B, V], state)


def loop_start(ids: list[int]) -> int | None:
    """Where the repeats of a looping transcript begin (keep `ids[:k]`), or None if `ids` does
    not end in a loop (see LOOP_LONG_BLOCK)."""
    return generation.loop_start(ids, lambda n: 2 if n >= LOOP_LONG_BLOCK else LOOP_SHORT_REPEATS, min_block=2)


class WhisperDecoding:
    """Whisper's token facts and greedy decoding, independent of the engine that runs the decoder.

    `step(tokens, state)` runs the decoder on new tokens given a state (None = fresh) and returns
    the last position's logits and the new state; PyTorch and ONNX Runtime both provide one.
    """

    def __init__(self, generation_config, tokenizer) -> None:
        gen = generation_config
        self.tokenizer = tokenizer
        self.sot: int = gen.decoder_start_token_id
        self.eos: int = gen.eos_token_id
        self.no_timestamps: int | None = getattr(gen, "no_timestamps_token_id", None)
        self.lang_ids: dict[str, int] = dict(getattr(gen, "lang_to_id", None) or {})
        self.task_ids: dict[str, int] = dict(getattr(gen, "task_to_id", None) or {})
        self.suppress = list(getattr(gen, "suppress_tokens", None) or [])
        self.begin_suppress = list(getattr(gen, "begin_suppress_tokens", None) or [])
        self.multilingual = bool(self.lang_ids) and bool(getattr(gen, "is_multilingual", True))

    def prompt(self, step: StepFn, b: int, language: str | None) -> torch.Tensor:
        """The decoder's forced start tokens, one row per clip: [B, n_start]."""
        if not self.multilingual:
            tokens = [self.sot] + ([self.no_timestamps] if self.no_timestamps is not None else [])
            return torch.tensor(tokens, dtype=torch.long).repeat(b, 1)
        if language is None:
            lang = self.detect_language(step, b)
        else:
            key = language if language.startswith("<|") else f"<|{language}|>"
            if key not in self.lang_ids:
                raise ValueError(f"Whisper does not know language {language!r}")
            lang = torch.full((b,), self.lang_ids[key], dtype=torch.long)
        tail = [self.task_ids["transcribe"]] if "transcribe" in self.task_ids else []
        if self.no_timestamps is not None:
            tail.append(self.no_timestamps)
        head = torch.full((b, 1), self.sot, dtype=torch.long)
        return torch.cat([head, lang.view(b, 1), torch.tensor(tail, dtype=torch.long).repeat(b, 1)], dim=1)

    def detect_language(self, step: StepFn, b: int) -> torch.Tensor:
        logits, _ = step(torch.full((b, 1), self.sot, dtype=torch.long), None)
        ids = torch.tensor(sorted(self.lang_ids.values()))
        return ids[logits.float().cpu()[:, ids].argmax(dim=-1)]

    def greedy(self, step: StepFn, b: int, max_new_tokens: int = MAX_TRANSCRIPT_TOKENS,
               language: str | None = None, stop_loops: bool = True) -> list[list[int]]:
        """Greedy transcription of `b` encoded clips; the generated token ids per clip.

        stop_loops: end a transcript that repeats itself at its first copy (`loop_start`);
        False gives plain greedy decoding, token for token what `whisper.generate` gives.
        """
        tokens = self.prompt(step, b, language)
        state = None
        done = torch.zeros(b, dtype=torch.bool)
        out: list[list[int]] = [[] for _ in range(b)]
        for i in range(max_new_tokens):
            logits, state = step(tokens, state)
            logits = logits.float().cpu()  # [B, vocab]
            if self.suppress:
                logits[:, self.suppress] = -torch.inf
            if i == 0 and self.begin_suppress:
                logits[:, self.begin_suppress] = -torch.inf
            nxt = torch.where(done, torch.full((b,), self.eos), logits.argmax(dim=-1))  # [B]
            for r in range(b):
                if not done[r] and int(nxt[r]) != self.eos:
                    out[r].append(int(nxt[r]))
                    if stop_loops and (k := loop_start(out[r])) is not None:
                        logger.info("transcript %d repeated itself; cut after %d tokens: %r", r, k,
                                    self.tokenizer.decode(out[r][:k], skip_special_tokens=True))
                        del out[r][k:]
                        nxt[r] = self.eos
            done |= nxt == self.eos
            if bool(done.all()):
                break
            tokens = nxt.view(b, 1)
        return out

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


class WhisperFrontEnd(nn.Module):
    """Wraps a transformers `WhisperForConditionalGeneration` (frozen) and its tokenizer."""

    def __init__(self, whisper: nn.Module, tokenizer, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.whisper = whisper
        self.tokenizer = tokenizer
        self.taps = tuple(taps)
        cfg = whisper.config
        self.n_mels: int = cfg.num_mel_bins
        self.d_model: int = cfg.d_model
        self.n_heads: int = cfg.encoder_attention_heads
        self.n_layers: int = cfg.encoder_layers
        self.decoding = WhisperDecoding(whisper.generation_config, tokenizer)

    @torch.inference_mode()
    def encode(self, features: torch.Tensor) -> EncoderOutput:
        """features [B, n_mels, 3000] -> tapped layer outputs and final states, in one pass."""
        return self.encode_graph(features)

    def encode_graph(self, features: torch.Tensor) -> EncoderOutput:
        """`encode` without the inference-mode wrapper (for export and training)."""
        enc = self.whisper.model.encoder
        if features.ndim != 3 or features.shape[1] != self.n_mels:
            raise ValueError(
                f"expected log-mel features [batch, {self.n_mels}, frames], got {tuple(features.shape)}"
            )
        x = F.gelu(enc.conv1(features))
        x = F.gelu(enc.conv2(x))  # [B, D, T]
        x = x.permute(0, 2, 1)  # [B, T, D]
        x = x + enc.embed_positions.weight[: x.shape[1]]
        taps: list[torch.Tensor] = []
        for i, layer in enumerate(enc.layers):
            x = layer(x, attention_mask=None, layer_head_mask=None)[0]
            if i in self.taps:
                taps.append(x)
        return EncoderOutput(taps=taps, final=enc.layer_norm(x))

    def step_fn(self, final: torch.Tensor) -> StepFn:
        """A decoder step over encoded clips `final` [B, T, D], with a transformers cache."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        def step(tokens: torch.Tensor, cache):
            cache = cache if cache is not None else EncoderDecoderCache(DynamicCache(), DynamicCache())
            out = self.whisper.model.decoder(
                input_ids=tokens.to(final.device), encoder_hidden_states=final, past_key_values=cache, use_cache=True
            )
            return self.whisper.proj_out(out.last_hidden_state[:, -1]), out.past_key_values

        return step

    @torch.inference_mode()
    def transcribe_ids(
        self, final: torch.Tensor, max_new_tokens: int = MAX_TRANSCRIPT_TOKENS, language: str | None = None,
        stop_loops: bool = True,
    ) -> list[list[int]]:
        """Greedy transcription of encoded clips; returns the generated token ids per clip."""
        return self.decoding.greedy(self.step_fn(final), final.shape[0], max_new_tokens, language, stop_loops)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.decoding.decode(ids)

"""Whisper as DeSTA uses it: one encoder pass that feeds both the connector and the transcript.

`encode` runs the encoder layers by hand so it can keep the raw outputs of the tapped layers
(before the encoder's final LayerNorm, as the connector was trained) and the final,
normalized states (what Whisper's decoder cross-attends to) from the *same* pass. `transcribe`
is a greedy decoder loop over those final states with a key/value cache; the reference instead
calls `whisper.generate(input_features)`, which runs the encoder a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_TRANSCRIPT_TOKENS = 128  # the reference transcribes with max_new_tokens=128


@dataclass
class EncoderOutput:
    taps: list[torch.Tensor]  # n_taps x [B, T, d_enc], raw outputs of the tapped layers
    final: torch.Tensor  # [B, T, d_enc], after the encoder's final LayerNorm


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
        gen = whisper.generation_config
        self._sot: int = gen.decoder_start_token_id
        self._eos: int = gen.eos_token_id
        self._no_timestamps: int | None = getattr(gen, "no_timestamps_token_id", None)
        self._lang_ids: dict[str, int] = dict(getattr(gen, "lang_to_id", None) or {})
        self._task_ids: dict[str, int] = dict(getattr(gen, "task_to_id", None) or {})
        self._suppress = list(getattr(gen, "suppress_tokens", None) or [])
        self._begin_suppress = list(getattr(gen, "begin_suppress_tokens", None) or [])

    @property
    def multilingual(self) -> bool:
        return bool(self._lang_ids) and bool(getattr(self.whisper.generation_config, "is_multilingual", True))

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

    def _prompt(self, final: torch.Tensor, language: str | None) -> torch.Tensor:
        """The decoder's forced start tokens, one row per clip: [B, n_start]."""
        b = final.shape[0]
        tokens = [self._sot]
        if self.multilingual:
            if language is None:
                lang = self._detect_language(final)
            else:
                key = language if language.startswith("<|") else f"<|{language}|>"
                if key not in self._lang_ids:
                    raise ValueError(f"Whisper does not know language {language!r}")
                lang = torch.full((b,), self._lang_ids[key], dtype=torch.long)
            rows = torch.tensor(tokens).repeat(b, 1)
            rows = torch.cat([rows, lang.view(b, 1)], dim=1)
            tail = [self._task_ids["transcribe"]] if "transcribe" in self._task_ids else []
            if self._no_timestamps is not None:
                tail.append(self._no_timestamps)
            return torch.cat([rows, torch.tensor(tail, dtype=torch.long).repeat(b, 1)], dim=1)
        if self._no_timestamps is not None:
            tokens.append(self._no_timestamps)
        return torch.tensor(tokens, dtype=torch.long).repeat(b, 1)

    def _detect_language(self, final: torch.Tensor) -> torch.Tensor:
        sot = torch.full((final.shape[0], 1), self._sot, dtype=torch.long, device=final.device)
        logits = self._logits(sot, final, cache=None)[0][:, -1]
        ids = torch.tensor(sorted(self._lang_ids.values()), device=final.device)
        return ids[logits[:, ids].argmax(dim=-1)].cpu()

    def _logits(self, tokens: torch.Tensor, final: torch.Tensor, cache):
        out = self.whisper.model.decoder(
            input_ids=tokens, encoder_hidden_states=final, past_key_values=cache, use_cache=True
        )
        return self.whisper.proj_out(out.last_hidden_state), out.past_key_values

    @torch.inference_mode()
    def transcribe_ids(
        self, final: torch.Tensor, max_new_tokens: int = MAX_TRANSCRIPT_TOKENS, language: str | None = None
    ) -> list[list[int]]:
        """Greedy transcription of encoded clips; returns the generated token ids per clip."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        b = final.shape[0]
        tokens = self._prompt(final, language).to(final.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        done = torch.zeros(b, dtype=torch.bool, device=final.device)
        out: list[list[int]] = [[] for _ in range(b)]
        for step in range(max_new_tokens):
            logits, cache = self._logits(tokens, final, cache)
            logits = logits[:, -1].float()  # [B, vocab]
            if self._suppress:
                logits[:, self._suppress] = -torch.inf
            if step == 0 and self._begin_suppress:
                logits[:, self._begin_suppress] = -torch.inf
            nxt = logits.argmax(dim=-1)  # [B]
            nxt = torch.where(done, torch.full_like(nxt, self._eos), nxt)
            for i in range(b):
                if not done[i] and nxt[i].item() != self._eos:
                    out[i].append(int(nxt[i]))
            done |= nxt == self._eos
            if bool(done.all()):
                break
            tokens = nxt.view(b, 1)
        return out

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

"""LoRA on the LLM's q/k/v projections: the reference's optional `use_lora` (r=16, alpha=16).

Weights carry the names the reference's peft-wrapped LLM saves them under, so checkpoints move
both ways:
    llm_model.model.layers.{i}.self_attn.{q,k,v}_proj.lora_A.default.weight   [r, in]
    llm_model.model.layers.{i}.self_attn.{q,k,v}_proj.lora_B.default.weight   [out, r]

The backbone's modules are not replaced: a forward hook on each projection adds
`scale * B(A(dropout(x)))` to its output, so the frozen LLM keeps its own parameter names.

Scope (`DestaConfig.lora_scope`):
- "all": every token of every conversation, as the reference does. Text-only answers change too.
- "audio": only conversations that carry audio, and only from the first audio position on.
  Text-only conversations and the fixed prompt prefix before the audio stay exactly the
  backbone's, so language preservation holds by construction and the prefix key/value cache
  stays valid.

The hooks only know "from position id `start[b]` on in row b" (`active`); `starts` turns the
scope and a prompt's audio splices into those positions: zeros for "all", each row's first audio
position for "audio". Outside `active` the LLM is the plain backbone (the transcript-only ablation).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from .config import LORA_SCOPES as SCOPES

RANK = 16
ALPHA = 16
DROPOUT = 0.1  # during training, as the reference
TARGETS = ("q_proj", "k_proj", "v_proj")
NAME = "llm_model.model.layers.{layer}.self_attn.{proj}.lora_{ab}.default.weight"
NEVER = torch.iinfo(torch.long).max  # the start of a row that carries no audio


class LoRA(nn.Module):
    """Low-rank updates for the attention projections of a Llama-family causal LM."""

    def __init__(self, llm: nn.Module, *, scope: str = "all", rank: int = RANK, alpha: float = ALPHA,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"lora scope must be one of {SCOPES}, got {scope!r}")
        self.scope, self.scale = scope, alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.names: list[str] = []  # official name of A, then B, per projection
        self.A, self.B = nn.ParameterList(), nn.ParameterList()
        self._start: torch.Tensor | None = None  # [B] position id where LoRA begins in each row
        self._gate: torch.Tensor | None = None  # [B, S, 1] for the LLM call in progress
        p = next(llm.parameters())
        for i, layer in enumerate(llm.model.layers):
            for proj in TARGETS:
                linear = getattr(layer.self_attn, proj)
                a = torch.empty(rank, linear.in_features, device=p.device, dtype=p.dtype)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's default; B = 0 makes a fresh LoRA a no-op
                self.A.append(nn.Parameter(a))
                self.B.append(nn.Parameter(torch.zeros(linear.out_features, rank, device=p.device, dtype=p.dtype)))
                self.names += [NAME.format(layer=i, proj=proj, ab=ab) for ab in "AB"]
                linear.register_forward_hook(self._hook(len(self.A) - 1))
        llm.model.register_forward_pre_hook(self._positions, with_kwargs=True)

    # ------------------------------------------------------------------ weights

    def state(self) -> dict[str, torch.Tensor]:
        """The weights under their official names."""
        out = {}
        for k, (a, b) in enumerate(zip(self.A, self.B)):
            out[self.names[2 * k]], out[self.names[2 * k + 1]] = a, b
        return out

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy official-named weights in (the caller has checked names and shapes)."""
        with torch.no_grad():
            for name, param in self.state().items():
                param.copy_(weights[name].to(param.dtype))

    # ------------------------------------------------------------------ where it applies

    def starts(self, attention_mask: torch.Tensor, splices) -> torch.Tensor | None:
        """This scope's per-row start positions for a left-padded prompt with these audio splices.

        Scope "all" starts every row at 0; scope "audio" at its first audio position
        (`audio_positions`; None when no row carries audio: LoRA stays off).
        """
        if self.scope == "all":
            return torch.zeros(attention_mask.shape[0], dtype=torch.long)
        return audio_positions(attention_mask, splices)

    @contextmanager
    def active(self, start: torch.Tensor | None) -> Iterator[None]:
        """LoRA from position id `start[b]` on in row b (NEVER: not in that row); None: off."""
        prev, self._start = self._start, start
        try:
            yield
        finally:
            self._start = prev

    def over(self, tokens: Iterable, start: torch.Tensor | None) -> Iterator:
        """`tokens` (a generator that runs the LLM step by step) with `start` active at each step.

        The context is entered around each step only, so other LLM calls made while the
        generator is suspended run without it.
        """
        it = iter(tokens)
        while True:
            with self.active(start):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def _positions(self, module, args, kwargs):
        self._gate = None
        if self._start is None:
            return None
        pos = kwargs.get("position_ids")
        if pos is None:
            raise RuntimeError("LoRA needs the LLM called with position_ids while it is active")
        self._gate = (pos >= self._start.to(pos.device)[:, None]).unsqueeze(-1)  # [B, S, 1]
        return None

    def _hook(self, k: int):
        def add(module, args, out):
            if self._start is None or self._gate is None:
                return out  # not active: exactly the backbone
            x = args[0]  # [B, S, in]
            delta = (self.dropout(x).to(self.A[k].dtype) @ self.A[k].T @ self.B[k].T) * self.scale
            return out + (delta * self._gate.to(delta.dtype)).to(out.dtype)

        return add


def audio_positions(attention_mask: torch.Tensor, splices) -> torch.Tensor | None:
    """Position id of each row's first audio placeholder (NEVER for rows without audio).

    `splices` are the prompt's `Splice`s (row, start column); with left padding a column's
    position id is the number of real tokens before it. None if no row carries audio.
    """
    if not splices:
        return None
    first: dict[int, int] = {}
    for s in splices:
        first[s.row] = min(s.start, first.get(s.row, s.start))
    mask = attention_mask.long().cpu()
    return torch.tensor([int(mask[b, : first[b]].sum()) if b in first else NEVER for b in range(mask.shape[0])],
                        dtype=torch.long)

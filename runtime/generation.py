"""Token generation for the LLM: prefill once, then one cached decode step per token.

A small loop of our own (instead of `llm.generate`) so the caller can stream tokens, time the
prefill and the first token separately, and cancel between tokens. For greedy decoding it
produces exactly the token ids `transformers`' `generate` produces on the same inputs (tested).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is chosen (the seed's `generate` arguments)."""

    max_new_tokens: int = 512  # hard cap on generated tokens per answer
    do_sample: bool = False  # False: greedy (argmax); True: sample
    temperature: float = 1.0  # divides the logits before sampling (do_sample only)
    top_p: float = 1.0  # nucleus sampling mass (do_sample only)
    banned_ids: tuple[tuple[int, ...], ...] = ()  # per batch row, token ids never chosen (empty: no bans)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def choose(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if opts.banned_ids:
        logits = ban(logits, opts.banned_ids)
    if not opts.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / opts.temperature, dim=-1)
    if opts.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(dim=-1) - sorted_p < opts.top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1).squeeze(-1)


def ban(logits: torch.Tensor, banned_ids: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """logits [B, V] with each row's banned ids set to -inf."""
    if len(banned_ids) != logits.shape[0]:
        raise ValueError(f"banned_ids has {len(banned_ids)} rows for a batch of {logits.shape[0]}")
    rows = [i for i, ids in enumerate(banned_ids) for _ in ids]
    cols = [t for ids in banned_ids for t in ids]
    if not cols:
        return logits
    if max(cols) >= logits.shape[1] or min(cols) < 0:
        raise ValueError(f"banned token ids must be in [0, {logits.shape[1]}), got {min(cols)}..{max(cols)}")
    out = logits.clone()
    out[rows, cols] = float("-inf")
    return out


# Greedy decoding of a small LLM can fall into a loop ("The answer is: The answer is: ...") until
# the token cap: seconds of decoding on a CPU, and in the listening loop every later answer waits
# for it. An answer that ends in a block of n tokens repeated back to back at least
# max(ANSWER_LOOP_REPEATS, ceil(ANSWER_LOOP_TOKENS / n)) times is cut after the block's first copy.
ANSWER_LOOP_REPEATS = 3  # copies in a row of a block of any length ...
ANSWER_LOOP_TOKENS = 16  # ... spanning at least this many tokens (one token: 16 times running)


def loop_start(ids: list[int], repeats: Callable[[int], int], min_block: int = 1) -> int | None:
    """Where the repeats begin (keep `ids[:k]`) if `ids` ends in a block of n >= `min_block` tokens
    repeated back to back `repeats(n)` times; else None."""
    for n in range(min_block, len(ids) // 2 + 1):
        times = repeats(n)
        if n * times > len(ids):
            continue
        block = ids[-n:]
        if all(ids[len(ids) - (k + 1) * n : len(ids) - k * n] == block for k in range(1, times)):
            return len(ids) - (times - 1) * n
    return None


def answer_loop_start(ids: list[int]) -> int | None:
    """Where the repeats of a looping answer begin (see ANSWER_LOOP_REPEATS), or None."""
    return loop_start(ids, lambda n: max(ANSWER_LOOP_REPEATS, math.ceil(ANSWER_LOOP_TOKENS / n)))


def clock(device: torch.device) -> float:
    """time.perf_counter() once `device` has finished the work queued on it. CUDA kernels run
    asynchronously: a stage timed without waiting would be charged to the next one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class StepTimes:
    prefix_ms: float = 0.0  # computing/copying the cached prompt prefix
    prefill_ms: float = 0.0  # the prompt's forward pass (after the cached prefix, if any)
    first_token_s: float | None = None  # perf_counter() when the first token was chosen


def generate_stream(
    llm: torch.nn.Module,
    *,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    eos_ids: set[int],
    opts: SamplingOptions,
    times: StepTimes | None = None,
    cancelled: Callable[[], bool] | None = None,
    past=None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids [B] step by step; rows that finished yield their eos id.

    Either `input_ids` [B, L] or `inputs_embeds` [B, L, D] (with left padding) is the prompt.
    `past`: a key/value cache already holding the first P prompt positions (a cached prefix);
    the ids/embeds are then the remaining L - P positions and `attention_mask` covers all L.
    Stops when every row has emitted an eos id, after `max_new_tokens`, or when `cancelled()`.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    times = times or StepTimes()
    mask = attention_mask.clone()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    new = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    pos = pos[:, -new:]
    eos = torch.tensor(sorted(eos_ids), device=mask.device)
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    fill = int(eos[0])
    t0 = time.perf_counter()
    out = _forward(llm, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=pos,
                   past_key_values=past)
    times.prefill_ms = (clock(mask.device) - t0) * 1000
    cache = out.past_key_values
    logits = out.logits[:, -1]
    for step in range(opts.max_new_tokens):
        nxt = choose(logits, opts)
        nxt = torch.where(done, torch.full_like(nxt, fill), nxt)
        if step == 0:
            times.first_token_s = clock(nxt.device)
        yield nxt
        done |= torch.isin(nxt, eos)
        if bool(done.all()) or step + 1 == opts.max_new_tokens:
            return
        if cancelled is not None and cancelled():
            return
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
        out = _forward(llm, input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache)
        cache = out.past_key_values
        logits = out.logits[:, -1]


def _forward(llm, **inputs):
    # inference mode around each call only: a `with` spanning the generator's `yield` would leave
    # the mode switched on in the caller's thread while it is suspended, and switch it off
    # whenever the abandoned generator is garbage-collected, possibly inside another model call
    with torch.inference_mode():
        return llm(**inputs, use_cache=True, **_last_position_only(type(llm)))


@functools.cache
def _last_position_only(cls: type) -> dict[str, int]:
    """The keyword that makes a transformers causal LM project only the last position to the
    vocabulary: every caller here reads `logits[:, -1]`, and a prefill's other positions cost a
    [positions, vocab] product for nothing (SmolLM2-135M: a quarter of its prefill on the 2-core CPU).
    `logits_to_keep` since transformers 4.50, `num_logits_to_keep` before; nothing for a model
    that has neither (the ONNX graph returns the last position's logits only)."""
    params = inspect.signature(getattr(cls, "forward", cls.__call__)).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


class PrefixCache:
    """Key/value cache of a fixed prompt prefix (system prompt and template up to the audio).

    Computed once per distinct prefix (and `tag`: a variant of the LLM, such as LoRA on) and
    copied for each request (generation appends to it).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._cache = None

    def get(self, llm: torch.nn.Module, prefix_ids: torch.Tensor, tag: str | None = None):
        """A fresh copy of the cache for `prefix_ids` [1, P], computing it on a miss."""
        key = (tag, tuple(prefix_ids[0].tolist()))
        if key != self._key:
            pos = torch.arange(prefix_ids.shape[1], device=prefix_ids.device)[None]
            out = _forward(llm, input_ids=prefix_ids, position_ids=pos)
            self._key, self._cache = key, out.past_key_values
        return copy.deepcopy(self._cache)

    def reset(self) -> None:
        self._key = self._cache = None


def stream_with_prefix(
    llm,
    prefix: PrefixCache,
    *,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    eos_ids: set[int],
    opts: SamplingOptions,
    times: StepTimes,
    cancelled: Callable[[], bool] | None = None,
    prefix_ids: torch.Tensor | None = None,
    prefix_tag: str | None = None,
) -> Iterator[torch.Tensor]:
    """`generate_stream`, reusing the cached key/values of `prefix_ids` [1, P] when given."""
    past = None
    if prefix_ids is not None:
        t0 = time.perf_counter()
        past = prefix.get(llm, prefix_ids, prefix_tag)
        times.prefix_ms = (clock(prefix_ids.device) - t0) * 1000
        p = prefix_ids.shape[1]
        input_ids = None if input_ids is None else input_ids[:, p:]
        inputs_embeds = None if inputs_embeds is None else inputs_embeds[:, p:]
    return generate_stream(llm, attention_mask=attention_mask, input_ids=input_ids, inputs_embeds=inputs_embeds,
                           eos_ids=eos_ids, opts=opts, times=times, cancelled=cancelled, past=past)


def last_logits(llm, prefix: PrefixCache, input_ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Next-token logits [V] after `input_ids` [1, L], whose first `prefix_len` ids are a fixed
    prefix kept in `prefix` (no generation: a scoring call)."""
    past = prefix.get(llm, input_ids[:, :prefix_len]) if prefix_len else None
    pos = torch.arange(prefix_len, input_ids.shape[1], device=input_ids.device)[None]
    out = _forward(llm, input_ids=input_ids[:, prefix_len:], attention_mask=torch.ones_like(input_ids),
                   position_ids=pos, past_key_values=past)
    return out.logits[0, -1]


def eos_ids_of(generation_config, tokenizer) -> set[int]:
    """End-of-sequence ids: the LLM's generation config (int or list) plus the tokenizer's."""
    ids: set[int] = set()
    for v in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    if not ids:
        raise ValueError("the LLM defines no end-of-sequence token")
    return ids

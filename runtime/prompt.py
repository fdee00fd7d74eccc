"""Prompt assembly: conversations in the seed's message format -> left-padded LLM token ids.

Each `<|AUDIO|>` in a message becomes the text `<start_audio>`, then `n_audio + n_transcript`
copies of the placeholder token, then `<end_audio>`. Before the LLM runs, the placeholders are
overwritten by the clip's audio embeddings followed by the transcript's token embeddings
(`splice`). The chat template is the LLM's own. Text around the locators is tokenized piece by
piece, as the reference's tokenizer does when `<|AUDIO|>` is an added token, so token ids near
the audio match the reference's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

# The assistant's default turn (ask and listen): chosen on a handful of spoken requests with the
# tiny preset; "Reply to the speaker." gave direct answers where "Answer the question in the
# audio." made SmolLM2-135M repeat the request back.
ASSISTANT_SYSTEM = "You are a helpful voice assistant. Answer the spoken request briefly and accurately."
ASSISTANT_PROMPT = "Reply to the speaker."

START_AUDIO = "<start_audio>"
END_AUDIO = "<end_audio>"


@dataclass(frozen=True)
class AudioRef:
    """One `audios` entry: where it sits and what the caller gave."""

    conversation: int  # index of the conversation in the batch
    audio: Any  # a path, or an `Audio` object
    text: str | None  # caller's transcript (skips ASR) or None


@dataclass(frozen=True)
class Splice:
    """Where one clip's embeddings go: row `row`, positions [start, start + n_audio + n_text)."""

    row: int
    start: int
    n_audio: int  # audio embeddings (prompt_size, or 0 in the transcript-only ablation)
    n_text: int  # transcript tokens


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # [B, L] left-padded
    attention_mask: torch.Tensor  # [B, L] 0 on padding
    splices: list[Splice]  # one per clip, in order of appearance

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions that ignore left padding: [B, L]."""
        pos = self.attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)


def normalize_batch(messages: list) -> list[list[dict]]:
    """Accept one conversation (a list of message dicts) or a batch (a list of them)."""
    if not isinstance(messages, list) or not messages:
        raise TypeError("messages must be a non-empty list of message dicts, or a list of such lists")
    if all(isinstance(m, dict) for m in messages):
        return [messages]
    if all(isinstance(c, list) and c and all(isinstance(m, dict) for m in c) for c in messages):
        return messages
    raise TypeError("messages must be a list of dicts (one conversation) or a list of non-empty lists of dicts")


def collect_audios(conversations: list[list[dict]], audio_locator: str) -> list[AudioRef]:
    """Validate messages and list their audios in order; errors name the message at fault."""
    refs: list[AudioRef] = []
    for c, conv in enumerate(conversations):
        for m, msg in enumerate(conv):
            where = f"conversation {c}, message {m}"
            if "role" not in msg or "content" not in msg:
                raise ValueError(f"{where}: each message needs 'role' and 'content'")
            if not isinstance(msg["content"], str):
                raise TypeError(f"{where}: 'content' must be a string, got {type(msg['content']).__name__}")
            audios = msg.get("audios") or []
            n_loc = msg["content"].count(audio_locator)
            if n_loc != len(audios):
                raise ValueError(
                    f"{where}: content has {n_loc} {audio_locator} but 'audios' lists {len(audios)} clips"
                )
            for a in audios:
                if not isinstance(a, dict) or "audio" not in a:
                    raise ValueError(f"{where}: each 'audios' entry must be a dict with an 'audio' key")
                text = a.get("text")
                if text is not None and not isinstance(text, str):
                    raise TypeError(f"{where}: 'text' must be a string or None")
                audio = a["audio"]
                if isinstance(audio, os.PathLike):
                    audio = os.fspath(audio)
                refs.append(AudioRef(conversation=c, audio=audio, text=text))
    return refs


def render(tokenizer, conversation: list[dict]) -> str:
    """The LLM's own chat template, with the generation prompt appended."""
    plain = [{"role": m["role"], "content": m["content"]} for m in conversation]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)


def conversation_ids(
    tokenizer,
    conversation: list[dict],
    *,
    audio_locator: str,
    placeholder_id: int,
    spans: list[tuple[int, int]],
) -> tuple[list[int], list[int]]:
    """Token ids of one conversation and the start of each clip's placeholder run.

    spans: (n_audio, n_text) per clip of this conversation, in order.
    """
    pieces = render(tokenizer, conversation).split(audio_locator)
    if len(pieces) - 1 != len(spans):
        raise ValueError(
            f"the chat template kept {len(pieces) - 1} of {len(spans)} {audio_locator} markers; "
            "it must pass message content through unchanged"
        )
    ids: list[int] = []
    starts: list[int] = []
    last = len(pieces) - 1
    for k, piece in enumerate(pieces):
        text = (END_AUDIO if k > 0 else "") + piece + (START_AUDIO if k < last else "")
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        if k < last:
            n_audio, n_text = spans[k]
            starts.append(len(ids))
            ids.extend([placeholder_id] * (n_audio + n_text))
    return ids, starts


def build_batch(
    tokenizer,
    conversations: list[list[dict]],
    *,
    audio_locator: str,
    placeholder_id: int,
    pad_id: int,
    spans: list[tuple[int, int]],
) -> PromptBatch:
    """Tokenize a batch, left-pad it, and record where each clip's embeddings go.

    spans: (n_audio, n_text) for every clip of the batch, in order of appearance.
    """
    rows: list[list[int]] = []
    starts: list[list[int]] = []
    k = 0
    for conv in conversations:
        n = sum(m["content"].count(audio_locator) for m in conv)
        ids, st = conversation_ids(
            tokenizer, conv, audio_locator=audio_locator, placeholder_id=placeholder_id, spans=spans[k : k + n]
        )
        rows.append(ids)
        starts.append(st)
        k += n
    if k != len(spans):
        raise ValueError(f"{len(spans)} clip spans given for {k} {audio_locator} markers")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    splices: list[Splice] = []
    k = 0
    for r, (ids, st) in enumerate(zip(rows, starts)):
        pad = width - len(ids)
        input_ids[r, pad:] = torch.tensor(ids, dtype=torch.long)
        mask[r, pad:] = 1
        for s in st:
            splices.append(Splice(row=r, start=pad + s, n_audio=spans[k][0], n_text=spans[k][1]))
            k += 1
    return PromptBatch(input_ids=input_ids, attention_mask=mask, splices=splices)


def splice(
    embeds: torch.Tensor,
    splices: list[Splice],
    audio_embeds: torch.Tensor | None,
    text_embeds: list[torch.Tensor],
) -> torch.Tensor:
    """Overwrite placeholder embeddings: audio embeddings first, then the transcript's.

    embeds [B, L, D]; audio_embeds [n_clips, prompt_size, D] or None; text_embeds n_clips x [n_text, D].
    """
    out = embeds.clone()
    for i, sp in enumerate(splices):
        parts = []
        if sp.n_audio:
            assert audio_embeds is not None and audio_embeds.shape[1] == sp.n_audio
            parts.append(audio_embeds[i].to(out.dtype))
        if sp.n_text:
            assert text_embeds[i].shape[0] == sp.n_text
            parts.append(text_embeds[i].to(out.dtype))
        if parts:
            block = torch.cat(parts, dim=0)
            out[sp.row, sp.start : sp.start + block.shape[0]] = block
    return out

"""Training examples from DeSTA-AQA5M-schema JSONL, and the collate function that batches them.

    record ──► clips (log-mel) + transcripts (≤100 LLM tokens)
           ──► prompt ids exactly as inference builds them (runtime/prompt.py) + response + end-of-turn
           ──► labels: -100 everywhere except the response tokens and the end-of-turn token

Design choices:
- Records come from `aqa5m.iter_aqa5m` (ours from `desta-edge datagen`, or the official files
  with a `data_root`), from one JSONL or several in the order given, each resolving its audio
  against its own directory unless a `data_root` is given; they are read once into memory as
  small tuples (paths and strings).
- The prompt part of every row is `runtime.prompt.conversation_ids` on the conversation without
  its last (assistant) message: the very ids `build_batch` gives at inference, so the connector
  is trained on the positions and tokens it will see. The target is the text that the chat
  template appends for the assistant message: the conversation is rendered with the assistant
  message (`add_generation_prompt=False`), the inference prompt (`add_generation_prompt=True`)
  must be a prefix of it (else a `ValueError`: the template cannot be trained this way), and the
  rest is tokenized on its own, as the model would generate it after the prompt. Labels cover
  that rest up to and including the first end-of-turn token; what follows it (ChatML's "\\n") is
  dropped.
- Rows are left-padded, as at inference; position ids ignore the padding (`cumsum - 1`).
- Transcripts: the record's `text` (never ASR during training), truncated to
  `MAX_TRAIN_TRANSCRIPT_TOKENS` LLM tokens as the reference does; a missing text is `" "`
  (the reference's no-speech transcript).
- Audio longer than the 30 s window is cut to it (logged), as Whisper's window would.
- Encoder window: the full 30 s by default. With `encoder_padding_s`, a `short_window_share` of
  the batches instead get the clip plus that much silence (runtime `encoder_frames`), the opt-in
  shorter window of inference, so one connector serves both. Which batches is decided by a hash
  of their record ids: the same on every run, every worker and after a resume.
"""

from __future__ import annotations

import itertools
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from desta_edge.runtime.audio import N_FRAMES, check_encoder_padding, encoder_frames, load_audio
from desta_edge.runtime.prompt import Splice, conversation_ids, render

from .aqa5m import iter_aqa5m

logger = logging.getLogger(__name__)

MAX_TRAIN_TRANSCRIPT_TOKENS = 100  # the reference truncates training transcripts to 100 LLM tokens
IGNORE_INDEX = -100  # label of positions that carry no loss (torch's cross-entropy default)
NO_SPEECH_TRANSCRIPT = " "  # a clip without a transcript, as the reference writes it


@dataclass(frozen=True)
class Example:
    """One training record, reduced to what a batch needs."""

    id: str  # the record id
    prompt: list[dict[str, Any]]  # messages up to the last user turn (audio paths resolved)
    response: str  # the assistant message: the training target
    audios: tuple[str, ...]  # audio file paths, in order of appearance
    transcripts: tuple[str, ...]  # one per audio ("text" of the record, or " ")


def jsonl_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Path, ...]:
    """One JSONL path or several, as a tuple in the order given (`train` and `ship` take either)."""
    paths = (Path(data),) if isinstance(data, (str, os.PathLike)) else tuple(Path(p) for p in data)
    if not paths:
        raise ValueError("no training data given")
    return paths


class AQADataset(torch.utils.data.Dataset):
    """DeSTA-AQA5M JSONL records as `Example`s; `data_root` resolves relative audio paths."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike],
                 data_root: str | os.PathLike | None = None, *, limit: int | None = None) -> None:
        """`paths`: one JSONL or several, read in the order given (`limit` counts over all of them)."""
        self.paths = jsonl_paths(paths)
        self.examples: list[Example] = []
        records = itertools.chain.from_iterable(iter_aqa5m(path, data_root) for path in self.paths)
        for rec in itertools.islice(records, limit):
            prompt = [{k: v for k, v in m.items()} for m in rec.messages[:-1]]
            self.examples.append(Example(
                id=rec.id, prompt=prompt, response=rec.messages[-1]["content"],
                audios=tuple(str(a.path) for a in rec.audios),
                transcripts=tuple(a.text if a.text is not None else NO_SPEECH_TRANSCRIPT for a in rec.audios),
            ))
        if not self.examples:
            raise ValueError(f"{', '.join(map(str, self.paths))}: no training records")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


@dataclass
class TrainBatch:
    ids: list[str]  # record ids, one per row
    features: torch.Tensor  # [n_clips, n_mels, n_frames] log-mel of every clip, in order (3000: the full window)
    transcript_ids: list[torch.Tensor]  # n_clips x [n_text] LLM token ids
    input_ids: torch.Tensor  # [B, L] left-padded; placeholders where audio/transcript go
    attention_mask: torch.Tensor  # [B, L] 0 on padding
    position_ids: torch.Tensor  # [B, L] positions ignoring the left padding
    labels: torch.Tensor  # [B, L] IGNORE_INDEX except response + end-of-turn tokens
    splices: list[Splice]  # where each clip's embeddings go

    def to(self, device: torch.device) -> "TrainBatch":
        return TrainBatch(self.ids, self.features.to(device), [t.to(device) for t in self.transcript_ids],
                          self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                          self.labels.to(device), self.splices)


class Collator:
    """Turns a list of `Example`s into a `TrainBatch` for a given `DestaModel`.

    Holds only the tokenizer, the feature extractor and a few ids (picklable, so DataLoader
    workers can run it).
    """

    def __init__(self, model, *, audio_features: bool = True, encoder_padding_s: float | None = None,
                 short_window_share: float = 0.5) -> None:
        check_encoder_padding(encoder_padding_s)
        if not 0.0 <= short_window_share <= 1.0:
            raise ValueError(f"short_window_share must be in [0, 1], got {short_window_share}")
        self.encoder_padding_s, self.short_window_share = encoder_padding_s, short_window_share
        self.tokenizer = model.tokenizer
        self.features = model.features
        self.audio_locator: str = model.config.audio_locator
        self.placeholder_id: int = model.placeholder_id
        self.pad_id: int = model.pad_id
        self.end_ids: set[int] = set(model.eos_ids)
        self.n_audio: int = model.config.prompt_size if audio_features else 0

    def transcript_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)[:MAX_TRAIN_TRANSCRIPT_TOKENS]

    def target_ids(self, example: Example) -> list[int]:
        """Token ids the template appends for the assistant message, through the end-of-turn token."""
        prompt_text = render(self.tokenizer, example.prompt)
        plain = [{"role": m["role"], "content": m["content"]} for m in example.prompt]
        plain.append({"role": "assistant", "content": example.response})
        full = self.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=False)
        if not full.startswith(prompt_text):
            raise ValueError(
                f"record {example.id}: the chat template's generation prompt is not a prefix of the rendered "
                "conversation with the assistant message; this template cannot be trained with prefix targets"
            )
        ids = self.tokenizer.encode(full[len(prompt_text):], add_special_tokens=False)
        for k, tok in enumerate(ids):
            if tok in self.end_ids:
                return ids[: k + 1]
        raise ValueError(f"record {example.id}: the chat template ends the assistant turn with none of the "
                         f"end-of-turn ids {sorted(self.end_ids)}")

    def n_frames(self, examples: list[Example], clips: list) -> int:
        """The encoder window of this batch: 3000 frames, or the longest clip plus the padding."""
        if self.encoder_padding_s is None or not clips:
            return N_FRAMES
        key = zlib.crc32(",".join(ex.id for ex in examples).encode()) / 2**32
        if key >= self.short_window_share:
            return N_FRAMES
        return encoder_frames(max(len(c) for c in clips), self.encoder_padding_s)

    def __call__(self, examples: list[Example]) -> TrainBatch:
        clips = [load_audio(p, allow_truncate=True).samples for ex in examples for p in ex.audios]
        features = self.features(clips, self.n_frames(examples, clips))  # [n_clips, n_mels, n_frames]
        text_ids = [self.transcript_ids(t) for ex in examples for t in ex.transcripts]
        rows: list[tuple[list[int], list[int], list[int]]] = []  # (ids, labels, clip starts)
        k = 0
        for ex in examples:
            spans = [(self.n_audio, len(ids)) for ids in text_ids[k : k + len(ex.audios)]]
            k += len(ex.audios)
            prompt, starts = conversation_ids(self.tokenizer, ex.prompt, audio_locator=self.audio_locator,
                                              placeholder_id=self.placeholder_id, spans=spans)
            target = self.target_ids(ex)
            rows.append((prompt + target, [IGNORE_INDEX] * len(prompt) + target, starts))
        width = max(len(r[0]) for r in rows)
        b = len(rows)
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        splices: list[Splice] = []
        k = 0
        for r, (ids, lab, starts) in enumerate(rows):
            pad = width - len(ids)
            input_ids[r, pad:] = torch.tensor(ids)
            labels[r, pad:] = torch.tensor(lab)
            mask[r, pad:] = 1
            for s in starts:
                splices.append(Splice(row=r, start=pad + s, n_audio=self.n_audio, n_text=len(text_ids[k])))
                k += 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return TrainBatch(
            ids=[ex.id for ex in examples], features=features,
            transcript_ids=[torch.tensor(t, dtype=torch.long) for t in text_ids],
            input_ids=input_ids, attention_mask=mask, position_ids=positions, labels=labels, splices=splices,
        )

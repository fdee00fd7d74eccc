"""Read DeSTA-AQA5M JSONL files (the official data, or ours from datagen) as a stream.

Schema (DESIGN.md §1): `id`, `dataset`, `seed_description`, `prompt`, `response`, `messages`
(a list of `{role, content, audios?: [{audio: relative path, text: transcript}]}`).

Design choices:
- Streaming: `iter_aqa5m` reads one line at a time, so a 5-million-line file is never held
  in memory. Blank lines are skipped.
- Validation is strict and early: a malformed record raises `ValueError` naming the file, the
  line number and the problem, instead of failing deep inside training.
- Audio paths stay relative in the file; `data_root` resolves them. Checking that each audio
  file exists is optional (`check_audio=True`), since a stat per record is slow on network disks.
- Extra fields (e.g. datagen's `category`) are allowed and kept in `extra`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REQUIRED_STR = ("id", "dataset", "seed_description", "prompt", "response")
ROLES = ("system", "user", "assistant")
AUDIO_LOCATOR = "<|AUDIO|>"


@dataclass(frozen=True)
class AudioRef:
    path: Path  # resolved against data_root
    relative: str  # as written in the file
    text: str | None  # the transcript, when given


@dataclass(frozen=True)
class AQARecord:
    id: str
    dataset: str
    seed_description: str
    prompt: str
    response: str
    messages: list[dict[str, Any]]  # as in the file, with audio paths resolved
    audios: list[AudioRef]  # every audio in message order
    line: int  # 1-based line number in the file
    extra: dict[str, Any] = field(default_factory=dict)  # fields beyond the schema


def _fail(path: Path, line: int, problem: str) -> ValueError:
    return ValueError(f"{path}:{line}: {problem}")


def parse_record(obj: Any, *, path: Path, line: int, data_root: Path,
                 audio_locator: str = AUDIO_LOCATOR, check_audio: bool = False) -> AQARecord:
    """Validate one decoded JSON object and resolve its audio paths."""
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected a JSON object, got {type(obj).__name__}")
    for key in REQUIRED_STR:
        if key not in obj:
            raise _fail(path, line, f"missing field {key!r}")
        if not isinstance(obj[key], str):
            raise _fail(path, line, f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail(path, line, "field 'messages' must be a non-empty list")
    audios: list[AudioRef] = []
    resolved_messages = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise _fail(path, line, f"messages[{i}] must be {{role: one of {ROLES}, content: str}}, got {msg!r:.120}")
        refs = msg.get("audios", [])
        if not isinstance(refs, list):
            raise _fail(path, line, f"messages[{i}].audios must be a list")
        n_locators = msg["content"].count(audio_locator)
        if n_locators != len(refs):
            raise _fail(path, line, f"messages[{i}] has {n_locators} {audio_locator} and {len(refs)} audios")
        new_refs = []
        for j, ref in enumerate(refs):
            if not isinstance(ref, dict) or not isinstance(ref.get("audio"), str) or not ref["audio"]:
                raise _fail(path, line, f"messages[{i}].audios[{j}] needs an 'audio' path string")
            text = ref.get("text")
            if text is not None and not isinstance(text, str):
                raise _fail(path, line, f"messages[{i}].audios[{j}].text must be a string or null")
            full = Path(ref["audio"]) if os.path.isabs(ref["audio"]) else data_root / ref["audio"]
            if check_audio and not full.is_file():
                raise _fail(path, line, f"audio file not found: {full}")
            audios.append(AudioRef(full, ref["audio"], text))
            new_refs.append({**ref, "audio": str(full)})
        resolved_messages.append({**msg, "audios": new_refs} if "audios" in msg else dict(msg))
    if not audios:
        raise _fail(path, line, "no audio in any message")
    if messages[-1]["role"] != "assistant":
        raise _fail(path, line, "the last message must be the assistant's response")
    extra = {k: v for k, v in obj.items() if k not in REQUIRED_STR and k != "messages"}
    return AQARecord(obj["id"], obj["dataset"], obj["seed_description"], obj["prompt"], obj["response"],
                     resolved_messages, audios, line, extra)


def iter_aqa5m(path: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
               check_audio: bool = False, audio_locator: str = AUDIO_LOCATOR) -> Iterator[AQARecord]:
    """Stream validated records; `data_root` defaults to the JSONL file's directory."""
    path = Path(path)
    root = Path(data_root) if data_root is not None else path.parent
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise _fail(path, n, f"not valid JSON ({e.msg} at column {e.colno})") from e
            yield parse_record(obj, path=path, line=n, data_root=root, audio_locator=audio_locator,
                               check_audio=check_audio)

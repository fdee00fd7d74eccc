"""Seed descriptions in the DeSTA-AQA5M style, from a corpus metadata record.

Speech:     `[00:00-00:03] What is the capital of France? (Gender: Female, Pitch: High, Speaking speed: Fast, Volume: Loud, Duration: 3s)`
Noisy:      `... Volume: Loud, Noise: Noisy, Duration: 3s)`
Non-speech: `[00:00-00:05] (Sound: beep, Duration: 5s)`

Design choices:
- Attribute order is fixed (Gender, Pitch, Speaking speed, Volume, Noise, Duration) so the LLM
  sees one format; an attribute with no label (e.g. gender failed its F0 check) is left out.
- Noise appears only when noise was added; clean clips say nothing about noise, as in DeSTA.
- The duration is rounded to whole seconds (at least 1), and the time stamp spans it.
"""

from __future__ import annotations

from typing import Any, Mapping

ATTRIBUTES = (("gender", "Gender"), ("pitch", "Pitch"), ("speed", "Speaking speed"), ("volume", "Volume"))
# every "Name:" a description can hold, in the parentheses `seed_description` writes
FIELD_NAMES = tuple(name for _, name in ATTRIBUTES) + ("Noise", "Sound", "Duration")
SECONDS_PER_MINUTE = 60


def duration_seconds(duration_s: float) -> int:
    """The whole seconds a description states (rounded, at least 1)."""
    return max(1, int(round(duration_s)))


def timestamp(seconds: int) -> str:
    """`[00:00-MM:SS]` covering `seconds`."""
    minutes, secs = divmod(seconds, SECONDS_PER_MINUTE)
    return f"[00:00-{minutes:02d}:{secs:02d}]"


def seed_description(record: Mapping[str, Any]) -> str:
    """The seed description of one clip (a metadata.jsonl record)."""
    seconds = duration_seconds(float(record["duration_s"]))
    if record.get("kind") == "sound" or record.get("transcript") is None:
        sound = record.get("sound")
        if not sound:
            raise ValueError(f"record {record.get('id')!r} has neither a transcript nor a sound label")
        return f"{timestamp(seconds)} (Sound: {sound}, Duration: {seconds}s)"
    fields = [f"{name}: {record[key]}" for key, name in ATTRIBUTES if record.get(key)]
    noise = record.get("noise")
    if noise and noise != "Clean":
        fields.append(f"Noise: {noise}")
    fields.append(f"Duration: {seconds}s")
    return f"{timestamp(seconds)} {record['transcript'].strip()} ({', '.join(fields)})"

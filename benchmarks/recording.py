"""A multi-question test recording with known speech boundaries (several voices, noise).

The requests are spoken by espeak-ng and flite. With $DESTA_SPEECH_CACHE set to a directory, each
synthesized part is kept there and read back on later runs, so that a machine without the
synthesizers (a GPU box with no package registry) can run the benchmarks on speech made elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000
QUESTIONS = [
    ("What is the capital of France?", "flite", "slt"),
    ("How many days are there in a week?", "espeak", "en-us"),
    ("Please turn on the lights in the kitchen.", "flite", "awb"),
    ("What time does the train leave tomorrow morning?", "espeak", "en-gb+m3"),
    ("Set a timer for ten minutes.", "flite", "rms"),
    ("Name three colors of the rainbow.", "espeak", "en+f3"),
    ("Who wrote the play Romeo and Juliet?", "flite", "kal"),
    ("How do I make a cup of green tea?", "espeak", "en-us+m5"),
    # hesitant speakers: " | " is a mid-request pause, longer than the end-of-turn silence
    ("Set an alarm for | seven o'clock tomorrow.", "espeak", "en-gb+f3"),
    ("What is the capital of | Germany?", "flite", "slt"),
]
HESITATION = " | "
HESITATION_S = 0.4  # the pause inside a hesitant request


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    start_s: float  # true start of speech in the recording
    end_s: float  # true end of speech


def _speak(text: str, engine: str, voice: str, path: Path) -> np.ndarray:
    """The spoken request; hesitations become HESITATION_S of silence between separately spoken parts."""
    pause = np.zeros(int(HESITATION_S * RATE), dtype=np.float32)
    parts = [_synth(t, engine, voice, path.with_name(f"{path.stem}_{i}.wav")) for i, t in enumerate(text.split(HESITATION))]
    return np.concatenate([p for part in parts for p in (pause, part)][1:])


def said(text: str) -> str:
    """The words of a QUESTIONS entry, without hesitation marks."""
    return text.replace(HESITATION, " ")


SPEECH_CACHE_ENV = "DESTA_SPEECH_CACHE"
SPEECH_CACHE_VERSION = 1  # part of each cached file's name: bump it when _synthesize changes


def _synth(text: str, engine: str, voice: str, path: Path) -> np.ndarray:
    """`text` spoken by `engine` with `voice`: 16 kHz, its leading and trailing silence trimmed."""
    cache = os.environ.get(SPEECH_CACHE_ENV)
    if not cache:
        return _synthesize(text, engine, voice, path)
    digest = hashlib.sha256(f"{SPEECH_CACHE_VERSION}\0{engine}\0{voice}\0{text}".encode()).hexdigest()[:20]
    kept = Path(cache) / f"{engine}-{digest}.wav"
    if kept.is_file():
        x, sr = sf.read(str(kept), dtype="float32")
        if sr != RATE:
            raise ValueError(f"{kept}: {sr} Hz in the speech cache, expected {RATE}")
        return x
    x = _synthesize(text, engine, voice, path)
    kept.parent.mkdir(parents=True, exist_ok=True)
    part = kept.with_name(f".{kept.stem}.{os.getpid()}.wav")  # renamed into place: never read half-written
    sf.write(str(part), x, RATE, subtype="FLOAT")  # exact: a cached run hears what a fresh one hears
    os.replace(part, kept)
    return x


def _synthesize(text: str, engine: str, voice: str, path: Path) -> np.ndarray:
    if engine == "espeak":
        subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", str(path), text], check=True)
    else:
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
    import soxr

    x, sr = sf.read(str(path), dtype="float32")
    x = soxr.resample(x, sr, RATE)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return x[loud[0] : loud[-1] + 1]  # trim the synthesizer's own leading/trailing silence


RECORDED_LEVEL_DBFS = -26.0  # recordings of people: every request's active level, so one SNR holds for all


def recorded_requests(manifest: Path) -> list[tuple[str, str, np.ndarray]]:
    """(transcript or "", speaker, samples) of a real_voices.py manifest's whole-file recordings.

    Each is cut to its active span (its own leading and trailing room tone removed, so the true
    end of speech is known) and brought to RECORDED_LEVEL_DBFS (the recordings differ by 20 dB).
    """
    from desta_edge.training.acoustics import active_bounds_s, set_level
    from desta_edge.training.recordings import load_segment, read_manifest

    out = []
    for r in read_manifest(manifest):
        if "start_s" in r or "end_s" in r:
            continue
        x = load_segment(r)
        start, end = active_bounds_s(x)
        x = x[int(start * RATE): int(end * RATE)]
        out.append((r.get("transcript") or "", str(r.get("speaker")), set_level(x, RECORDED_LEVEL_DBFS)))
    return out


def build(out: Path, *, gap_s: tuple[float, float] = (1.2, 2.0), snr_db: float = 20.0, seed: int = 0,
          requests: list[tuple[str, str, np.ndarray]] | None = None) -> list[Utterance]:
    """Write the recording to `out` (16 kHz WAV) and return the true utterance boundaries.

    The requests are QUESTIONS, synthesized, unless `requests` gives (text, voice, samples).
    """
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    truth: list[Utterance] = []
    t = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if requests is None:
            requests = [(said(text), f"{engine}:{voice}", _speak(text, engine, voice, Path(tmp) / f"{i}.wav"))
                        for i, (text, engine, voice) in enumerate(QUESTIONS)]
        for text, voice, speech in requests:
            gap = np.zeros(int(rng.uniform(*gap_s) * RATE), dtype=np.float32)
            parts += [gap, speech]
            t += len(gap) / RATE
            truth.append(Utterance(text, voice, t, t + len(speech) / RATE))
            t += len(speech) / RATE
    parts.append(np.zeros(int(1.5 * RATE), dtype=np.float32))
    audio = np.concatenate(parts)
    speech_power = np.mean(np.concatenate([p for p in parts if p.any()]) ** 2)
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    hum = 0.5 * np.sin(2 * np.pi * 60 * np.arange(len(audio)) / RATE).astype(np.float32)
    noise = noise + hum
    noise *= np.sqrt(speech_power / np.mean(noise**2) / 10 ** (snr_db / 10))
    sf.write(str(out), audio + noise, RATE)
    return truth


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str  # what is said
    voice: str


def question_clips(out_dir: Path, *, limit: int | None = None, lead_s: float = 0.3, tail_s: float = 0.5) -> list[Clip]:
    """The same spoken questions as separate clean 16 kHz WAVs (a little silence around each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clips: list[Clip] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (text, engine, voice) in enumerate(QUESTIONS[:limit]):
            speech = _speak(text, engine, voice, Path(tmp) / f"{i}.wav")
            pad = lambda s: np.zeros(int(s * RATE), dtype=np.float32)  # noqa: E731
            path = out_dir / f"q{i}.wav"
            sf.write(str(path), np.concatenate([pad(lead_s), speech, pad(tail_s)]), RATE)
            clips.append(Clip(path, said(text), f"{engine}:{voice}"))
    return clips

"""An evaluation corpus from real recordings: the same labels, measured by the same rules.

`desta-edge eval` reads a corpus directory (metadata.jsonl + audio/). `build_recordings` writes
one from a manifest of recordings of people, so the paralinguistic evaluation runs on real
voices and rooms instead of the synthesizers the adapter was trained on.

Manifest: JSONL, one recording (or one segment of it) per line.
  {"audio": "path.wav", "start_s": 2.5, "end_s": 6.0, "gender": "Female",
   "transcript": "what was said", "noise": "Clean", "speaker": "spk1", "source": "where it came from"}
Only `audio` is required (absolute, or relative to the manifest). A segment longer than the
model's 30 s window is an error, never cut. Two more optional fields: `answer`, the short answer
to the question the transcript asks (the recording as it is then joins `spoken_qa.jsonl`, so
`eval` asks it by voice and in text), and `synthesizer`, for speech that a synthesizer made
rather than a person ("recording" when not given).

Design choices:
- Labels come from `labels.py` on the recording's own samples: median F0 -> pitch (relative to the
  stated gender, which is kept only if the F0 is plausible for it, as in the synthetic corpus),
  words per second of the stated transcript over the active span -> speed (only over
  labels.MIN_SPEED_WORDS words or more), active RMS -> volume. What the manifest does not state is left
  unlabelled and not asked about: no gender without a stated gender, no speed without a
  transcript, no noise label unless stated (a real recording's own noise level is unknown).
- Each recording also gives three derived clips whose label is known by construction: re-levelled
  to a quiet and to a loud speaking level, and with white, pink or brown noise added at a random
  SNR from NOISE_SNR_DB. Voices and rooms stay real; only the level and the added noise change.
- Everything goes in the "test" split; the random choices come from one seed, per row.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from desta_edge.runtime.audio import AudioError, prepare_audio

from . import acoustics, labels
from .corpus import MANIFEST, METADATA, SPEECH, SPOKEN_QA, _counts, _r
from .metrics import normalize_words

logger = logging.getLogger(__name__)

SPLIT = "test"
SYNTHESIZER = "recording"  # the `synthesizer` field of every record: real audio
GENDERS = ("Male", "Female")
QUIET_DBFS = -38.0  # active RMS of the "quiet" copy (Quiet is below labels.VOLUME_EDGES_DBFS[0])
LOUD_DBFS = -14.0  # ... of the "loud" copy (Loud is at or above VOLUME_EDGES_DBFS[1])
NOISE_COLORS = ("white", "pink", "brown")
NOISE_SNR_DB = (0.0, 10.0)  # added-noise SNR range of the "noisy" copy, uniform
FIELDS = {"audio", "start_s", "end_s", "gender", "transcript", "noise", "speaker", "source", "answer", "synthesizer"}
NOISE_VALUES = (labels.CLEAN, *labels.NOISE_WORDS)


@dataclass(frozen=True)
class RecordingsOptions:
    manifest: Path  # JSONL of recordings (see the module docstring)
    out_dir: Path  # where audio/test/ and metadata.jsonl go
    variants: bool = True  # also write the quiet, loud and noisy copies of each recording
    seed: int = 0  # picks the added noise's colour and SNR
    overwrite: bool = False  # replace an existing metadata.jsonl in out_dir
    progress: bool = False  # show a progress bar


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest's rows, checked, with `audio` made absolute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recordings manifest not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str):
            raise ValueError(f"{where}: each line must be an object with an \"audio\" path")
        unknown = set(row) - FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
        if row.get("gender") not in (None, *GENDERS):
            raise ValueError(f"{where}: gender must be one of {GENDERS} or null, got {row['gender']!r}")
        if row.get("noise") not in (None, *NOISE_VALUES):
            raise ValueError(f"{where}: noise must be one of {NOISE_VALUES} or null, got {row['noise']!r}")
        start, end = row.get("start_s", 0.0), row.get("end_s")
        if not isinstance(start, (int, float)) or start < 0 or (end is not None and (
                not isinstance(end, (int, float)) or end <= start)):
            raise ValueError(f"{where}: need 0 <= start_s < end_s, got {start!r} and {end!r}")
        if row.get("transcript") is not None and not normalize_words(str(row["transcript"])):
            raise ValueError(f"{where}: transcript has no words: {row['transcript']!r}")
        if row.get("answer") is not None and not (isinstance(row["answer"], str) and row["answer"].strip()
                                                  and row.get("transcript")):
            raise ValueError(f"{where}: an answer must be a non-empty string, with the question as the transcript; "
                             f"got answer {row['answer']!r}, transcript {row.get('transcript')!r}")
        if row.get("synthesizer") is not None and not (isinstance(row["synthesizer"], str) and row["synthesizer"].strip()):
            raise ValueError(f"{where}: synthesizer must be a non-empty string or null, got {row['synthesizer']!r}")
        audio = Path(row["audio"])
        row["audio"] = str(audio if audio.is_absolute() else path.parent / audio)
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no recordings listed")
    return rows


def load_segment(row: dict[str, Any]) -> np.ndarray:
    """The row's samples: 16 kHz mono float32, [start_s, end_s) of the file, at most 30 s."""
    src = row["audio"]
    try:
        info = sf.info(src)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"cannot read {src}: {e} (missing, unsupported or corrupt)") from e
    start = int(round(row.get("start_s", 0.0) * info.samplerate))
    end = info.frames if row.get("end_s") is None else int(round(row["end_s"] * info.samplerate))
    if start >= info.frames or end > info.frames + 1:
        raise AudioError(f"{src}: segment {row.get('start_s', 0.0)}-{row.get('end_s')} s is outside the "
                         f"file ({info.frames / info.samplerate:.2f} s)")
    data, rate = sf.read(src, start=start, stop=min(end, info.frames), dtype="float32", always_2d=True)
    label = f"{src} [{start / rate:.2f}-{min(end, info.frames) / rate:.2f} s]"
    return prepare_audio(data, rate, source=label).samples


def _speech_labels(speech: np.ndarray, row: dict[str, Any]) -> dict[str, Any]:
    """Gender, F0, pitch, speed and volume of one recording's speech, measured."""
    f0 = acoustics.median_f0(speech)
    gender = labels.gender_label(row["gender"], f0) if row.get("gender") else None
    if row.get("gender") and gender is None:
        logger.info("%s: measured F0 %s Hz is implausible for %s: no gender label", row["audio"], _r(f0), row["gender"])
    span = acoustics.active_span_s(speech)
    words = len(normalize_words(row["transcript"])) if row.get("transcript") else 0
    wps = labels.words_per_second(words, span)
    level = acoustics.active_rms_dbfs(speech)
    return {"voice_gender": row.get("gender"), "gender": gender, "f0_hz": _r(f0), "pitch": labels.pitch_label(f0, gender),
            "words_per_second": _r(wps, 2), "speed": labels.speed_label(wps), "rms_dbfs": _r(level),
            "volume": labels.volume_label(level)}


def render_variants(speech: np.ndarray, row: dict[str, Any], rng: np.random.Generator,
                    variants: bool = True) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """(variant name, samples, labels) for the recording as it is and, with `variants`, its derived copies."""
    base = _speech_labels(speech, row)
    out = [("as_recorded", speech, base | {"noise": row.get("noise"), "noise_type": None, "snr_db": None})]
    if not variants:
        return out
    for name, target in (("quiet", QUIET_DBFS), ("loud", LOUD_DBFS)):
        y = acoustics.set_level(speech, target)
        level = acoustics.active_rms_dbfs(y)
        out.append((name, y, base | {"rms_dbfs": _r(level), "volume": labels.volume_label(level),
                                     "noise": row.get("noise"), "noise_type": None, "snr_db": None}))
    color = NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]
    snr = round(float(rng.uniform(*NOISE_SNR_DB)), 1)
    y = acoustics.mix_at_snr(speech, acoustics.colored_noise(len(speech), color, rng), snr)
    scale = min(1.0, 0.99 / max(float(np.max(np.abs(y))), 1e-9))  # keep the SNR, lower both if it would clip
    level = acoustics.active_rms_dbfs(speech * scale)
    out.append(("noisy", (y * scale).astype(np.float32), base | {
        "rms_dbfs": _r(level), "volume": labels.volume_label(level), "noise": labels.noise_label(snr),
        "noise_type": color, "snr_db": snr}))
    return out


def build_recordings(options: RecordingsOptions) -> Path:
    """Write the evaluation corpus of `options.manifest` into `options.out_dir`; returns metadata.jsonl."""
    rows = read_manifest(options.manifest)
    out = Path(options.out_dir)
    meta = out / METADATA
    if meta.exists() and not options.overwrite:
        raise ValueError(f"{meta} exists; pass overwrite=True (--overwrite) to rebuild it")
    (out / "audio" / SPLIT).mkdir(parents=True, exist_ok=True)
    records, questions = [], []
    for i, row in enumerate(tqdm(rows, desc="recordings", unit="rec", disable=not options.progress)):
        speech = load_segment(row)
        rng = np.random.default_rng([options.seed, i])
        for variant, y, lab in render_variants(speech, row, rng, options.variants):
            rid = f"rec-{i:04d}-{variant}"
            rel = f"audio/{SPLIT}/{rid}.wav"
            sf.write(out / rel, y, acoustics.SAMPLE_RATE, subtype="PCM_16")
            if variant == "as_recorded" and row.get("answer") is not None:  # asked once, as it was recorded
                questions.append({"id": rid, "audio": rel, "question": row["transcript"], "answer": row["answer"]})
            records.append({"id": rid, "audio": rel, "split": SPLIT, "kind": SPEECH,
                            "transcript": row.get("transcript"), "sentence_type": None, "answer": row.get("answer"),
                            "synthesizer": row.get("synthesizer") or SYNTHESIZER, "voice": row.get("speaker"),
                            **lab, "sound": None,
                            "duration_s": round(len(y) / acoustics.SAMPLE_RATE, 2), "variant": variant,
                            "source": row.get("source") or row["audio"],
                            "segment_s": [row.get("start_s", 0.0), row.get("end_s")]})
    tmp = meta.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, meta)
    qa = out / SPOKEN_QA
    if questions:
        qa.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    else:
        qa.unlink(missing_ok=True)  # a rebuild without questions leaves none behind
    manifest = {"recordings": str(options.manifest), "variants": options.variants, "seed": options.seed,
                "counts": _counts(records), "spoken_questions": len(questions),
                "speakers": sorted({str(r["voice"]) for r in records})}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("recordings: %d clips from %d recordings in %s", len(records), len(rows), out)
    return meta

"""The synthetic speech corpus: 16 kHz WAVs + `metadata.jsonl` with labels measured from audio.

Design choices:
- Two stages. `plan_corpus` makes every random choice up front in one process from the seed
  (sentence, voice, rate/pitch setting, speed perturbation, loudness, noise type and SNR,
  non-speech sound), so the result is deterministic whatever the number of workers.
  `render_clip` turns one plan into audio and a metadata record; a small process pool runs it.
- Labels describe the audio, not the synthesizer setting: median F0, words per second over the
  active span, RMS dBFS of active frames are measured on the clean speech after gain and speed
  perturbation (the speaker's voice), then noise is mixed in at an exact SNR (see labels.py).
- Splits are disjoint by sentence (a hash of the text picks the split, so it is stable across
  seeds and sizes) and by voice (synth.py assigns each voice one split). Held-out spoken
  questions with known answers (sentences.heldout_questions) are only in the test split and
  are listed again in `spoken_qa.jsonl` for the spoken-QA evaluation.
- Babble noise is a sum of training-voice utterances, built once per worker from a fixed seed.
- Rooms and channels: a share of speech clips is played through a synthetic room (reverberation),
  a microphone or telephone band, and, when no noise is added, a room's faint background 30-50 dB
  under the speech (still labelled Clean: real "clean" recordings are never digitally silent).
  Labels are measured on the dry speech; the processed speech is brought back to its measured
  level. These choices come from a second random stream, so the rest of a seed's plan (and every
  label) is the same with or without them.
- Short replies and requests ("Yes.", "Stop.", "Seven.") take the place of a share of speech
  sentences when `short_fraction` > 0. Whether a clip gets one is drawn from a third random stream,
  so every other choice of the plan stays as it was; they are split by their text like the rest.
  A speaking speed is labelled only over four words or more (labels.MIN_SPEED_WORDS), as for
  recordings of people. A share of those in a woman's voice (`short_low_female_fraction`) is pitched
  low (synth.LOW_FEMALE_PITCH), drawn from a fourth stream after the plan's own prosody, so that
  short replies do not teach "low voice, few words: a man" and the genders stay as balanced as before.
  `low_female_fraction` does the same for the sentences said in a woman's voice, from a fifth stream,
  so that a low woman's voice is common enough for the pitch questions to teach it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from . import acoustics, labels
from .metrics import normalize_words
from .sentences import SHORT, Sentence, all_sentences, heldout_questions, short_utterances
from .synth import (ENGINE_WEIGHTS, FEMALE, LOW_FEMALE_PITCH, SPLITS, TEST, TRAIN, Prosody, Voice, all_voices,
                    available_engines, sample_prosody, synthesize)

logger = logging.getLogger(__name__)

SR = acoustics.SAMPLE_RATE
METADATA = "metadata.jsonl"
SPOKEN_QA = "spoken_qa.jsonl"
MANIFEST = "corpus.json"
SPEECH, SOUND = "speech", "sound"
KIND_WEIGHTS = {"question": 0.45, "command": 0.2, "statement": 0.35}  # share of speech clips per sentence kind
NOISE_TYPES = ("white", "pink", "brown", "babble", "hum")
SNR_RANGE_DB = (0.0, 20.0)  # added noise SNR, uniform
LEVEL_RANGE_DBFS = (-42.0, -12.0)  # target active RMS of the speech, uniform
SPEED_FACTOR_RANGE = (0.9, 1.1)  # resampling speed perturbation (pitch and tempo together)
PAD_RANGE_S = (0.1, 0.5)  # silence before and after the speech
SOUND_SECONDS = (1.0, 6.0)  # length range of non-speech clips
SOUND_LEVEL_DBFS = (-40.0, -10.0)  # active RMS range of non-speech clips
BABBLE_TALKERS = 4  # utterances summed into one babble signal
BABBLE_SEED = 1234  # babble is the same in every worker and every corpus
ROOM_SNR_DB = (30.0, 50.0)  # room tone under clean speech, uniform (labels.CLEAN_MIN_SNR_DB and up)
REVERB_RT60_S = (0.2, 0.8)  # reverberation time of the synthetic room, uniform
REVERB_DRR_DB = (0.0, 12.0)  # direct-to-reverberant energy ratio, uniform
CHANNEL_BANDS_HZ = ((300.0, 3400.0), (100.0, 7000.0), (150.0, 5000.0), (80.0, 4000.0))  # telephone, headset, laptop, cheap mic
AUGMENT_STREAM = 1  # the room/channel choices draw from default_rng([seed, AUGMENT_STREAM])
SHORT_STREAM = 2  # whether a speech clip is a short reply draws from default_rng([seed, SHORT_STREAM])
LOW_FEMALE_STREAM = 3  # a woman's short reply pitched low draws from default_rng([seed, LOW_FEMALE_STREAM])
LOW_FEMALE_SENTENCE_STREAM = 4  # ... and a woman's sentence, from default_rng([seed, LOW_FEMALE_SENTENCE_STREAM])


@dataclass(frozen=True)
class CorpusOptions:
    out_dir: Path  # where audio/ and metadata.jsonl go
    size: int  # number of clips
    seed: int = 0  # every random choice derives from it
    sound_fraction: float = 0.12  # share of non-speech clips
    noisy_fraction: float = 0.3  # share of speech clips with added noise
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/validation/test share of clips
    heldout_qa_fraction: float = 0.3  # share of test speech clips that are held-out spoken questions
    speed_perturb_fraction: float = 0.25  # share of speech clips resampled by SPEED_FACTOR_RANGE
    room_fraction: float = 0.7  # share of clean speech clips with room tone (ROOM_SNR_DB), still Clean
    reverb_fraction: float = 0.3  # share of speech clips played through a synthetic room
    channel_fraction: float = 0.3  # share of speech clips band-limited to one of CHANNEL_BANDS_HZ
    short_fraction: float = 0.0  # share of speech clips that say a short reply or request instead of a sentence
    short_low_female_fraction: float = 0.0  # share of the short replies in a woman's voice that are pitched low
    low_female_fraction: float = 0.0  # share of the sentences (not short replies) in a woman's voice pitched low
    workers: int = 2  # synthesis processes (1 = in this process)
    overwrite: bool = False  # replace an existing corpus in out_dir
    progress: bool = False  # show a progress bar


@dataclass(frozen=True)
class ClipPlan:
    id: str  # clip id, also the WAV file stem
    split: str  # train / validation / test
    kind: str  # SPEECH or SOUND
    seed: int  # seeds the clip's own noise / sound RNG
    level_dbfs: float  # target active RMS
    pad_s: tuple[float, float]  # silence before / after
    sentence: Sentence | None = None  # what is said (speech)
    voice: Voice | None = None  # who says it (speech)
    prosody: Prosody | None = None  # synthesizer rate / pitch setting (speech)
    speed_factor: float = 1.0  # resampling speed perturbation (speech)
    noise_type: str | None = None  # one of NOISE_TYPES, or None for clean
    snr_db: float | None = None  # SNR of the added noise
    sound: str | None = None  # one of acoustics.SOUND_KINDS (non-speech)
    sound_seconds: float = 0.0  # length of the non-speech clip
    room_snr_db: float | None = None  # room tone under clean speech (noise_type is then None)
    reverb: tuple[float, float] | None = None  # (RT60 s, direct-to-reverberant dB) of the synthetic room
    channel_hz: tuple[float, float] | None = None  # pass band of the microphone / line

    @property
    def audio_path(self) -> str:
        return f"audio/{self.split}/{self.id}.wav"


def sentence_split(text: str, fractions: tuple[float, float, float]) -> str:
    """Stable split of a sentence from a hash of its text."""
    u = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return TRAIN if u < fractions[0] else SPLITS[1] if u < fractions[0] + fractions[1] else TEST


def _check(options: CorpusOptions) -> None:
    if options.size < 1:
        raise ValueError(f"size must be >= 1, got {options.size}")
    if abs(sum(options.split_fractions) - 1) > 1e-6 or min(options.split_fractions) < 0:
        raise ValueError(f"split_fractions must be >= 0 and sum to 1, got {options.split_fractions}")
    for name in ("sound_fraction", "noisy_fraction", "heldout_qa_fraction", "speed_perturb_fraction",
                 "room_fraction", "reverb_fraction", "channel_fraction", "short_fraction",
                 "short_low_female_fraction", "low_female_fraction"):
        if not 0 <= getattr(options, name) <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(options, name)}")
    if options.workers < 1:
        raise ValueError(f"workers must be >= 1, got {options.workers}")


def plan_corpus(options: CorpusOptions, voices: list[Voice] | None = None) -> list[ClipPlan]:
    """Every clip's random choices, deterministic in `options.seed` (no audio is made)."""
    _check(options)
    rng = np.random.default_rng(options.seed)
    augment = np.random.default_rng([options.seed, AUGMENT_STREAM])
    short = np.random.default_rng([options.seed, SHORT_STREAM])
    low_short = np.random.default_rng([options.seed, LOW_FEMALE_STREAM])
    low_sentence = np.random.default_rng([options.seed, LOW_FEMALE_SENTENCE_STREAM])
    voices = all_voices() if voices is None else voices
    by_split_voice = {s: [v for v in voices if v.split == s] for s in SPLITS}
    pools: dict[tuple[str, str], list[Sentence]] = {}
    for s in all_sentences():
        pools.setdefault((sentence_split(s.text, options.split_fractions), s.kind), []).append(s)
    for pool in pools.values():
        rng.shuffle(pool)
    short_pools: dict[str, list[Sentence]] = {split: [] for split in SPLITS}  # kept apart from `pools`
    for s in short_utterances():
        short_pools[sentence_split(s.text, options.split_fractions)].append(s)
    for pool in short_pools.values():  # shuffled by their own stream: the other pools' order stays the same
        short.shuffle(pool)
    heldout = heldout_questions()
    rng.shuffle(heldout)
    cursor: dict[Any, int] = {}

    def take(key: Any, pool: list[Sentence]) -> Sentence:  # without replacement, cycling when exhausted
        i = cursor.get(key, 0)
        cursor[key] = i + 1
        return pool[i % len(pool)]

    # the clip count per split is exact (largest share first), clip order is shuffled
    counts = np.floor(np.asarray(options.split_fractions) * options.size).astype(int)
    counts[int(np.argmax(options.split_fractions))] += options.size - counts.sum()
    split_of = np.repeat(np.arange(3), counts)
    rng.shuffle(split_of)
    kinds = list(KIND_WEIGHTS)
    plans = []
    for i, si in enumerate(split_of):
        split = SPLITS[si]
        clip_seed = int(rng.integers(2**31))
        pad = (float(rng.uniform(*PAD_RANGE_S)), float(rng.uniform(*PAD_RANGE_S)))
        if rng.random() < options.sound_fraction or not by_split_voice[split]:
            sound = acoustics.SOUND_KINDS[int(rng.integers(len(acoustics.SOUND_KINDS)))]
            plans.append(ClipPlan(
                id=f"{split}-{i:06d}", split=split, kind=SOUND, seed=clip_seed, pad_s=(0.0, 0.0),
                level_dbfs=float(rng.uniform(*SOUND_LEVEL_DBFS)), sound=sound,
                sound_seconds=float(np.round(rng.uniform(*SOUND_SECONDS), 2)),
            ))
            continue
        if split == TEST and rng.random() < options.heldout_qa_fraction:
            sentence = take("heldout", heldout)
        else:
            kind = kinds[int(rng.choice(len(kinds), p=list(KIND_WEIGHTS.values())))]
            pool = pools.get((split, kind)) or [s for (sp, _), p in pools.items() if sp == split for s in p]
            sentence = take((split, kind), pool)
            if short.random() < options.short_fraction and short_pools[split]:
                sentence = take((split, SHORT), short_pools[split])
        voice = _pick_voice(by_split_voice[split], rng)
        noisy = rng.random() < options.noisy_fraction
        perturb = rng.random() < options.speed_perturb_fraction
        u = augment.random(3)  # always 3 + 4 draws per speech clip, so the stream stays aligned
        room_snr, rt60, drr, band = (augment.uniform(*ROOM_SNR_DB), augment.uniform(*REVERB_RT60_S),
                                     augment.uniform(*REVERB_DRR_DB), int(augment.integers(len(CHANNEL_BANDS_HZ))))
        level = float(rng.uniform(*LEVEL_RANGE_DBFS))
        prosody = sample_prosody(voice, rng)
        if voice.gender == FEMALE and voice.engine in LOW_FEMALE_PITCH:  # own streams: the others draw as always
            stream, share = ((low_short, options.short_low_female_fraction) if sentence.kind == SHORT
                             else (low_sentence, options.low_female_fraction))
            if stream.random() < share:
                prosody = sample_prosody(voice, stream, low_female=True)
        plans.append(ClipPlan(
            id=f"{split}-{i:06d}", split=split, kind=SPEECH, seed=clip_seed, pad_s=pad,
            level_dbfs=level, sentence=sentence, voice=voice, prosody=prosody,
            speed_factor=float(np.round(rng.uniform(*SPEED_FACTOR_RANGE), 3)) if perturb else 1.0,
            noise_type=NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))] if noisy else None,
            snr_db=float(np.round(rng.uniform(*SNR_RANGE_DB), 1)) if noisy else None,
            room_snr_db=float(np.round(room_snr, 1)) if not noisy and u[0] < options.room_fraction else None,
            reverb=(round(float(rt60), 2), round(float(drr), 1)) if u[1] < options.reverb_fraction else None,
            channel_hz=CHANNEL_BANDS_HZ[band] if u[2] < options.channel_fraction else None,
        ))
    return plans


def _pick_voice(voices: list[Voice], rng: np.random.Generator) -> Voice:
    """An engine by ENGINE_WEIGHTS (among those with voices here), then a gender (uniform among the
    engine's), then one of its voices: genders stay balanced however few voices of one an engine has."""
    engines = sorted({v.engine for v in voices}, key=list(ENGINE_WEIGHTS).index)
    weights = np.asarray([ENGINE_WEIGHTS[e] for e in engines])
    engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
    genders = sorted({v.gender for v in voices if v.engine == engine})
    gender = genders[int(rng.integers(len(genders)))]
    own = [v for v in voices if v.engine == engine and v.gender == gender]
    return own[int(rng.integers(len(own)))]


# ------------------------------------------------------------------ rendering (runs in workers)

_babble_cache: list[np.ndarray] = []


def _babble() -> np.ndarray:
    """Several training voices talking at once (same in every process)."""
    if not _babble_cache:
        rng = np.random.default_rng(BABBLE_SEED)
        voices = [v for v in all_voices({"espeak-ng": True}) if v.split == TRAIN]
        texts = [s.text for s in all_sentences() if s.kind == "statement"]
        parts = []
        for _ in range(BABBLE_TALKERS):
            v = voices[int(rng.integers(len(voices)))]
            text = " ".join(texts[int(rng.integers(len(texts)))] for _ in range(3))
            y = synthesize(v, text, sample_prosody(v, rng))
            parts.append(y / (np.sqrt(np.mean(y**2)) + acoustics.EPS))
        n = min(len(p) for p in parts)
        _babble_cache.append(np.sum([p[:n] for p in parts], axis=0).astype(np.float32))
    return _babble_cache[0]


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "babble":
        bank = _babble()
        return np.roll(np.tile(bank, n // len(bank) + 1), -int(rng.integers(len(bank))))[:n]
    if kind == "hum":
        return acoustics.hum(n, rng)
    return acoustics.colored_noise(n, kind, rng)


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(float(x), digits)


def render_clip(plan: ClipPlan) -> tuple[np.ndarray, dict[str, Any]]:
    """Make one clip's audio and its metadata record (labels measured on the audio)."""
    rng = np.random.default_rng(plan.seed)
    rec: dict[str, Any] = {"id": plan.id, "audio": plan.audio_path, "split": plan.split, "kind": plan.kind}
    if plan.kind == SOUND:
        y = acoustics.make_sound(plan.sound, plan.sound_seconds, rng)
        if plan.sound != "silence":
            y = acoustics.set_level(y, plan.level_dbfs)
        level = acoustics.active_rms_dbfs(y) if plan.sound != "silence" else None
        rec.update(transcript=None, sentence_type=None, answer=None, synthesizer=None, voice=None,
                   voice_gender=None, gender=None, f0_hz=None, pitch=None, words_per_second=None, speed=None,
                   rms_dbfs=_r(level), volume=None if level is None else labels.volume_label(level),
                   noise=labels.CLEAN, noise_type=None, snr_db=None, sound=plan.sound)
    else:
        assert plan.voice is not None and plan.sentence is not None and plan.prosody is not None
        speech = synthesize(plan.voice, plan.sentence.text, plan.prosody)
        if plan.speed_factor != 1.0:  # played faster/slower: pitch and tempo scale together
            speech = soxr.resample(speech, SR * plan.speed_factor, SR).astype(np.float32)
        speech = acoustics.set_level(speech, plan.level_dbfs)
        f0 = acoustics.median_f0(speech)
        level = acoustics.active_rms_dbfs(speech)
        span = acoustics.active_span_s(speech)
        wps = labels.words_per_second(len(normalize_words(plan.sentence.text)), span)
        gender = labels.gender_label(plan.voice.gender, f0)
        if gender is None:
            logger.info("%s: %s measured F0 %s Hz, implausible for %s: no gender label",
                        plan.id, plan.voice.id, _r(f0), plan.voice.gender)
        pad = [np.zeros(int(p * SR), np.float32) for p in plan.pad_s]
        y = np.concatenate([pad[0], speech, pad[1]])
        y, level = _room_and_channel(y, level, plan)
        if plan.noise_type is not None:
            voice = y
            y = acoustics.mix_at_snr(y, _noise(plan.noise_type, len(y), rng), plan.snr_db)
            peak = float(np.max(np.abs(y)))
            if peak > 0.99:  # keep the SNR, lower both: the volume label is re-measured below
                y = y * (0.99 / peak)
                level = acoustics.active_rms_dbfs(voice * (0.99 / peak))
        elif plan.room_snr_db is not None:
            y = acoustics.mix_at_snr(y, acoustics.room_tone(len(y), np.random.default_rng([plan.seed, AUGMENT_STREAM])),
                                     plan.room_snr_db)
        snr = plan.snr_db if plan.noise_type is not None else plan.room_snr_db
        rec.update(transcript=plan.sentence.text, sentence_type=plan.sentence.kind, answer=plan.sentence.answer,
                   synthesizer=plan.voice.engine, voice=plan.voice.name, voice_gender=plan.voice.gender,
                   gender=gender, f0_hz=_r(f0), pitch=labels.pitch_label(f0, gender),
                   words_per_second=_r(wps, 2), speed=labels.speed_label(wps), rms_dbfs=_r(level),
                   volume=labels.volume_label(level), noise=labels.noise_label(snr),
                   noise_type=plan.noise_type or ("room" if snr is not None else None), snr_db=snr, sound=None)
    rec["duration_s"] = round(len(y) / SR, 2)
    rec["settings"] = {"prosody": asdict(plan.prosody) if plan.prosody else None, "speed_factor": plan.speed_factor,
                       "target_dbfs": round(plan.level_dbfs, 1), "seed": plan.seed,
                       "reverb_rt60_s_drr_db": plan.reverb, "channel_hz": plan.channel_hz}
    return y.astype(np.float32), rec


def _room_and_channel(y: np.ndarray, level: float, plan: ClipPlan) -> tuple[np.ndarray, float]:
    """The padded speech through the plan's room and channel, brought back to its measured level
    (re-measured: the peak limit can lower it)."""
    if plan.reverb is None and plan.channel_hz is None:
        return y, level
    if plan.reverb is not None:
        rng = np.random.default_rng([plan.seed, AUGMENT_STREAM, 1])
        y = acoustics.convolve(y, acoustics.room_response(*plan.reverb, rng))
    if plan.channel_hz is not None:
        y = acoustics.band_limit(y, *plan.channel_hz)
    y = acoustics.set_level(y, level)
    return y, acoustics.active_rms_dbfs(y)


def _render_to(args: tuple[ClipPlan, str]) -> dict[str, Any]:
    plan, root = args
    y, rec = render_clip(plan)
    path = os.path.join(root, plan.audio_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, y, SR, subtype="PCM_16")
    return rec


# ------------------------------------------------------------------ the whole corpus


def build_corpus(options: CorpusOptions) -> Path:
    """Plan, synthesize and write the corpus; returns the path of metadata.jsonl."""
    out = Path(options.out_dir)
    meta = out / METADATA
    if meta.exists() and not options.overwrite:
        raise ValueError(f"{meta} exists; pass overwrite=True (--overwrite) to rebuild it")
    plans = plan_corpus(options)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, str(out)) for p in plans]
    bar = tqdm(total=len(plans), desc="corpus", unit="clip", disable=not options.progress)
    tmp = meta.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for rec in _map(jobs, options.workers):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            bar.update(1)
    bar.close()
    os.replace(tmp, meta)
    records = list(read_metadata(out))
    with open(out / SPOKEN_QA, "w") as f:
        for r in records:
            if r["split"] == TEST and r["answer"] is not None:
                f.write(json.dumps({"id": r["id"], "audio": r["audio"], "question": r["transcript"],
                                    "answer": r["answer"]}) + "\n")
    manifest = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
                "engines": available_engines(), "counts": _counts(records),
                "voices": {s: sorted({r["synthesizer"] + ":" + r["voice"] for r in records
                                      if r["split"] == s and r["voice"]}) for s in SPLITS}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("corpus: %d clips in %s", len(records), out)
    return meta


def _map(jobs: list[tuple[ClipPlan, str]], workers: int) -> Iterator[dict[str, Any]]:
    if workers == 1:
        yield from map(_render_to, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_render_to, jobs, chunksize=4)


def _counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("split", "kind", "gender", "pitch", "speed", "volume", "noise", "sound", "synthesizer"):
        counts: dict[str, int] = {}
        for r in records:
            counts[str(r[key])] = counts.get(str(r[key]), 0) + 1
        out[key] = dict(sorted(counts.items()))
    return out


def read_metadata(corpus_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a corpus's metadata.jsonl, in order."""
    path = Path(corpus_dir) / METADATA
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the corpus first (desta-edge corpus --out DIR)")
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e

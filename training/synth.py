"""Local speech synthesizers behind one function: espeak-ng, flite and festival (Debian packages).

Design choices:
- A `Voice` is one speaker identity (engine + voice name + variant) with its *nominal* gender
  and the split it belongs to. Splits are fixed per voice here, so validation and test voices
  are never heard in training: whole accents, whole espeak variants, and whole synthesizers
  (festival's kal/ked/slt-hts voices, flite's rms) are held out.
- `synthesize` returns 16 kHz mono float32 samples. Each engine varies rate and pitch with its
  own controls (espeak `-s`/`-p`, flite `duration_stretch`/`int_f0_target_mean`, festival
  `Duration_Stretch`); the corpus measures the result instead of trusting these settings.
- Engines are external programs: espeak-ng is required; flite and festival (`text2wave`) are
  used when installed (apt: flite, festival festvox-kallpc16k festvox-kdlpc16k
  festvox-us-slt-hts), and a missing one is logged and its voices skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from .acoustics import SAMPLE_RATE

logger = logging.getLogger(__name__)

MALE, FEMALE = "Male", "Female"
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
SYNTH_TIMEOUT_S = 60  # one sentence never takes this long; a hung synthesizer is an error

ESPEAK_ACCENTS = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-us-nyc"]  # "en" is British English ("en-gb" may resolve to an mbrola voice)
ESPEAK_VARIANTS = {  # variant -> nominal gender
    "m1": MALE, "m2": MALE, "m3": MALE, "m4": MALE, "m5": MALE, "m6": MALE, "m7": MALE,
    "f1": FEMALE, "f2": FEMALE, "f3": FEMALE, "f4": FEMALE, "f5": FEMALE, "linda": FEMALE, "steph": FEMALE,
    "anika": FEMALE,
}
ESPEAK_TEST = ({"en-029"}, {"m4", "f4", "steph"})  # (accents, variants) heard only in test
ESPEAK_VALIDATION = ({"en-us-nyc"}, {"m6", "f2"})  # (accents, variants) heard only in validation
# flite's only female voice trains (else every flite voice in training is male and "flite" would
# mean "man"); the same speaker's festival HTS voice, a different synthesis method, stays in test
FLITE_VOICES = {"kal": (MALE, TRAIN), "kal16": (MALE, TRAIN), "awb": (MALE, TRAIN), "rms": (MALE, VALIDATION),
                "slt": (FEMALE, TRAIN)}
FESTIVAL_VOICES = {"kal_diphone": (MALE, VALIDATION), "ked_diphone": (MALE, TEST),
                   "cmu_us_slt_arctic_hts": (FEMALE, TEST)}

ESPEAK_RATE_WPM = (80, 210)  # espeak -s range
ESPEAK_PITCH = {MALE: (10, 80), FEMALE: (30, 85)}  # espeak -p range (0-99) per nominal gender
FLITE_F0_HZ = {MALE: (80.0, 150.0), FEMALE: (165.0, 260.0)}  # flite int_f0_target_mean range
ENGINE_WEIGHTS = {"espeak-ng": 0.55, "flite": 0.25, "festival": 0.2}  # share of speech clips per engine
DURATION_STRETCH = (0.8, 1.8)  # flite/festival duration multiplier range (>1 is slower)
# pitch settings that put female voices low, near 150-185 Hz: flite sets its mean F0; espeak-ng's
# variants spread widely at one -p (16 voices on short words at -p 35-45: median F0 154-170 Hz, a
# quarter under 145, a quarter over 185; at -p 10-30 most fall under 145). Labels are still measured
LOW_FEMALE_PITCH = {"espeak-ng": (35, 46), "flite": (150.0, 185.0)}


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak-ng", "flite" or "festival"
    name: str  # engine voice name, e.g. "en-gb-x-rp+f3", "slt", "kal_diphone"
    gender: str  # nominal gender of the voice (checked against measured F0 by the corpus)
    split: str  # the only split this voice is heard in

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


@dataclass(frozen=True)
class Prosody:
    rate: float  # espeak words/min, or a duration stretch for flite/festival (>1 slower)
    pitch: float  # espeak -p (0-99) or flite target mean F0 in Hz; unused by festival


def _espeak_split(accent: str, variant: str) -> str:
    for split, (accents, variants) in ((TEST, ESPEAK_TEST), (VALIDATION, ESPEAK_VALIDATION)):
        if accent in accents or variant in variants:
            return split
    return TRAIN


def available_engines() -> dict[str, bool]:
    return {"espeak-ng": shutil.which("espeak-ng") is not None, "flite": shutil.which("flite") is not None,
            "festival": shutil.which("text2wave") is not None}


def all_voices(engines: dict[str, bool] | None = None) -> list[Voice]:
    """Every voice of the given (default: installed) engines, in a fixed order."""
    detected = engines is None
    engines = available_engines() if engines is None else engines
    if not engines.get("espeak-ng"):
        raise RuntimeError("espeak-ng is required for the corpus: apt-get install espeak-ng")
    out = [Voice("espeak-ng", f"{a}+{v}", g, _espeak_split(a, v)) for a in ESPEAK_ACCENTS
           for v, g in ESPEAK_VARIANTS.items()]
    for engine, table in (("flite", FLITE_VOICES), ("festival", FESTIVAL_VOICES)):
        if engines.get(engine):
            out += [Voice(engine, name, g, split) for name, (g, split) in table.items()]
        elif detected:
            logger.warning("%s is not installed: its %d voices are left out of the corpus", engine, len(table))
    return out


def sample_prosody(voice: Voice, rng: np.random.Generator, low_female: bool = False) -> Prosody:
    """A rate and a pitch setting for `voice`; `low_female` draws the pitch from LOW_FEMALE_PITCH
    (a female voice of espeak-ng or flite only: festival's voices have no pitch control here)."""
    if low_female and (voice.gender != FEMALE or voice.engine not in LOW_FEMALE_PITCH):
        raise ValueError(f"low_female needs a female espeak-ng or flite voice, got {voice.id} ({voice.gender})")
    espeak = voice.engine == "espeak-ng"
    pitch = LOW_FEMALE_PITCH[voice.engine] if low_female else (ESPEAK_PITCH if espeak else FLITE_F0_HZ)[voice.gender]
    if espeak:
        return Prosody(float(rng.integers(*ESPEAK_RATE_WPM)), float(rng.integers(*pitch)))
    stretch = float(np.round(rng.uniform(*DURATION_STRETCH), 2))
    return Prosody(stretch, float(np.round(rng.uniform(*pitch))))


def _run(cmd: list[str], stdin: str | None = None) -> None:
    try:
        subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{cmd[0]} failed ({e.returncode}): {e.stderr.strip()[:500]}") from e


def synthesize(voice: Voice, text: str, prosody: Prosody) -> np.ndarray:
    """Speak `text`: 16 kHz mono float32 samples."""
    with tempfile.TemporaryDirectory(prefix="desta-synth-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        if voice.engine == "espeak-ng":
            _run(["espeak-ng", "-v", voice.name, "-s", str(int(prosody.rate)), "-p", str(int(prosody.pitch)),
                  "-w", wav, text])
        elif voice.engine == "flite":
            _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={prosody.rate}",
                  "--setf", f"int_f0_target_mean={prosody.pitch}", "-t", text, "-o", wav])
        elif voice.engine == "festival":
            txt = os.path.join(tmp, "in.txt")
            with open(txt, "w") as f:
                f.write(text)
            setup = f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {prosody.rate}))"
            _run(["text2wave", "-eval", setup, txt, "-o", wav])
        else:
            raise ValueError(f"unknown engine {voice.engine!r}")
        samples, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    if len(mono) == 0:
        raise RuntimeError(f"{voice.id} produced no audio for {text!r}")
    return mono.astype(np.float32)

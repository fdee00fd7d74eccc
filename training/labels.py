"""Measured values -> the words of DeSTA-style descriptions (bin edges as named constants).

Design choices:
- Every label is derived from a *measurement* of the waveform (median F0, words per second of
  active speech, RMS dBFS of active frames, the SNR that was added), never from a synthesizer
  setting, so the same rules label real recordings.
- Pitch is binned relative to the speaker's gender (a 130 Hz voice is normal for a man and
  low for a woman); with no gender label, a gender-neutral scale is used.
- Gender comes from the voice's nominal gender, *checked* against measured F0: a clip whose
  median F0 is implausible for that gender (a "female" voice below FEMALE_MIN_F0_HZ, a "male"
  one above MALE_MAX_F0_HZ) gets no gender label rather than a wrong one.
"""

from __future__ import annotations

# pitch: (low below, high at or above) median F0 in Hz, by gender label
PITCH_EDGES_HZ = {"Male": (95.0, 140.0), "Female": (175.0, 240.0), None: (120.0, 200.0)}
PITCH_WORDS = ("Low", "Normal", "High")
MALE_MAX_F0_HZ = 175.0  # above this a nominally male voice is not plausibly male
FEMALE_MIN_F0_HZ = 145.0  # below this a nominally female voice is not plausibly female
# speaking speed: words per second over the active span (first to last active frame), measured
# only over at least MIN_SPEED_WORDS words (one word has no speaking rate: "five" is not slow)
SPEED_EDGES_WPS = (2.5, 3.6)
MIN_SPEED_WORDS = 4
SPEED_WORDS = ("Slow", "Normal", "Fast")
# volume: RMS dBFS of the active frames (RMS 1.0 = 0 dBFS)
VOLUME_EDGES_DBFS = (-32.0, -20.0)
VOLUME_WORDS = ("Quiet", "Normal", "Loud")
# noise: SNR in dB of the noise that was added (None = nothing added); a room's faint background,
# CLEAN_MIN_SNR_DB or more below the speech, still counts as clean
CLEAN = "Clean"
CLEAN_MIN_SNR_DB = 30.0
NOISE_EDGES_DB = (5.0, 15.0)
NOISE_WORDS = ("Very noisy", "Noisy", "Slightly noisy")


def _bin(value: float, edges: tuple[float, float], words: tuple[str, str, str]) -> str:
    low, high = edges
    return words[0] if value < low else words[1] if value < high else words[2]


def gender_label(nominal: str, f0_hz: float | None) -> str | None:
    """The voice's nominal gender if the measured F0 is plausible for it, else None."""
    if f0_hz is None:
        return None
    if nominal == "Male" and f0_hz > MALE_MAX_F0_HZ:
        return None
    if nominal == "Female" and f0_hz < FEMALE_MIN_F0_HZ:
        return None
    return nominal


def pitch_label(f0_hz: float | None, gender: str | None) -> str | None:
    return None if f0_hz is None else _bin(f0_hz, PITCH_EDGES_HZ[gender], PITCH_WORDS)


def words_per_second(words: int, span_s: float) -> float | None:
    """The speaking rate of `words` spoken over `span_s` seconds, None under MIN_SPEED_WORDS words."""
    return words / span_s if words >= MIN_SPEED_WORDS and span_s > 0 else None


def speed_label(words_per_second: float | None) -> str | None:
    return None if words_per_second is None else _bin(words_per_second, SPEED_EDGES_WPS, SPEED_WORDS)


def volume_label(rms_dbfs: float) -> str:
    return _bin(rms_dbfs, VOLUME_EDGES_DBFS, VOLUME_WORDS)


def noise_label(snr_db: float | None) -> str:
    return CLEAN if snr_db is None or snr_db >= CLEAN_MIN_SNR_DB else _bin(snr_db, NOISE_EDGES_DB, NOISE_WORDS)

"""Signal measurements and signal makers for the synthetic corpus (numpy only).

Design choices:
- Labels are *measured* from waveforms, so they mean the same thing on real recordings:
  `median_f0` is a YIN-style tracker (cumulative-mean-normalized difference function,
  absolute threshold, parabolic refinement) computed for all frames at once with FFTs;
  `active_mask` marks frames whose energy is within ACTIVE_RANGE_DB of the loudest frame;
  loudness is the RMS in dBFS over active frames only, so pauses do not lower it.
- Noise is added at an exact SNR measured against the active speech power, so the SNR label
  is true by construction. Noise colours come from shaping white noise in the frequency domain,
  with nothing below NOISE_LOW_CUT_HZ, so the SNR is the one a listener hears.
- Non-speech clips (tones, beeps, chirps, clicks, noises, hum, chords, silence) are generated
  here too; each maker takes an explicit `np.random.Generator` so clips are reproducible.
- Rooms and channels, so synthetic speech does not sound only like a synthesizer in a void: the
  faint background of a quiet room (`room_tone`), a synthetic room response (`room_response`:
  a direct path plus exponentially decaying noise, its energy set by RT60 and the
  direct-to-reverberant ratio) and a microphone or telephone band (`band_limit`, zero-phase).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
FRAME_S = 0.040  # analysis window for F0 and activity
HOP_S = 0.010  # analysis hop
F0_MIN_HZ = 60.0  # lowest pitch the tracker looks for
F0_MAX_HZ = 500.0  # highest pitch the tracker looks for
YIN_THRESHOLD = 0.15  # CMNDF dip below this counts as periodic
ACTIVE_RANGE_DB = 35.0  # frames within this many dB of the loudest frame count as active
SILENCE_DBFS = -120.0  # what an all-zero signal measures
NOISE_LOW_CUT_HZ = 20.0  # generated noise has no power below this (inaudible; microphones cut it too)
EPS = 1e-12


def frames(x: np.ndarray, size: int, hop: int) -> np.ndarray:
    """Frames of `size` samples every `hop` (zero-padded at the end): [n_frames, size]."""
    if len(x) < size:
        x = np.pad(x, (0, size - len(x)))
    n = 1 + (len(x) - size + hop - 1) // hop
    x = np.pad(x, (0, (n - 1) * hop + size - len(x)))
    idx = np.arange(size)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def dbfs(power: float | np.ndarray) -> float | np.ndarray:
    """Mean-square power to dBFS, with RMS 1.0 = 0 dBFS (a full-scale sine is -3 dBFS)."""
    return 10.0 * np.log10(np.maximum(power, EPS))


def frame_db(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame RMS level in dBFS: [n_frames]."""
    f = frames(np.asarray(x, np.float64), int(FRAME_S * sr), int(HOP_S * sr))
    return dbfs(np.mean(f**2, axis=1))


def active_mask(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Frames carrying signal: within ACTIVE_RANGE_DB of the loudest frame (and not digital silence)."""
    db = frame_db(x, sr)
    return (db > db.max() - ACTIVE_RANGE_DB) & (db > SILENCE_DBFS + 1)


def active_rms_dbfs(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """RMS level (dBFS, RMS 1.0 = 0 dB) over the active frames; SILENCE_DBFS for silence."""
    f = frames(np.asarray(x, np.float64), int(FRAME_S * sr), int(HOP_S * sr))
    mask = active_mask(x, sr)
    if not mask.any():
        return SILENCE_DBFS
    return float(dbfs(np.mean(f[mask] ** 2)))


def active_bounds_s(x: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[float, float] | None:
    """(start of the first active frame, end of the last) in seconds; None if nothing is active."""
    idx = np.flatnonzero(active_mask(x, sr))
    if len(idx) == 0:
        return None
    return float(idx[0] * HOP_S), float(idx[-1] * HOP_S + FRAME_S)


def active_span_s(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Seconds from the first to the last active frame (the speaking time, pauses included)."""
    bounds = active_bounds_s(x, sr)
    return 0.0 if bounds is None else bounds[1] - bounds[0]


def f0_track(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame F0 in Hz (NaN where unvoiced or inactive), YIN-style: [n_frames]."""
    x = np.asarray(x, np.float64)
    tau_min, tau_max = int(sr / F0_MAX_HZ), int(np.ceil(sr / F0_MIN_HZ))
    win = int(FRAME_S * sr)
    hop = int(HOP_S * sr)
    fr = frames(x, win + tau_max, hop)  # [N, W + T]
    n_fft = 1 << int(np.ceil(np.log2(2 * (win + tau_max))))
    head = np.fft.rfft(fr[:, :win], n_fft)
    full = np.fft.rfft(fr, n_fft)
    corr = np.fft.irfft(np.conj(head) * full, n_fft)[:, : tau_max + 1]  # r(tau) = sum_j x[j] x[j+tau]
    sq = np.concatenate([np.zeros((len(fr), 1)), np.cumsum(fr**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_tau = sq[:, taus + win] - sq[:, taus]  # sum of x[tau : tau+W]^2
    diff = energy_tau[:, :1] + energy_tau - 2 * corr  # d(tau): [N, T+1]
    diff[:, 0] = 0.0
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[1:] / np.maximum(cum, EPS)
    f0 = np.full(len(fr), np.nan)
    active = active_mask(x, sr)
    n = min(len(active), len(fr))
    for i in np.flatnonzero(active[:n]):
        row = cmnd[i]
        below = np.flatnonzero(row[tau_min:tau_max] < YIN_THRESHOLD)
        if len(below) == 0:
            continue
        t = tau_min + below[0]
        while t + 1 < tau_max and row[t + 1] < row[t]:  # walk down to the local minimum
            t += 1
        a, b, c = row[t - 1], row[t], row[t + 1]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if abs(denom) > EPS else 0.0
        f0[i] = sr / (t + float(np.clip(shift, -1, 1)))
    return f0


def median_f0(x: np.ndarray, sr: int = SAMPLE_RATE) -> float | None:
    """Median F0 over voiced frames in Hz, or None when fewer than a handful are voiced."""
    f0 = f0_track(x, sr)
    voiced = f0[~np.isnan(f0)]
    return float(np.median(voiced)) if len(voiced) >= 5 else None


# ------------------------------------------------------------------ shaping and mixing


def set_level(x: np.ndarray, target_dbfs: float, sr: int = SAMPLE_RATE, peak: float = 0.99) -> np.ndarray:
    """Scale so the active RMS is `target_dbfs`, then lower the gain if the peak would clip."""
    gain = 10 ** ((target_dbfs - active_rms_dbfs(x, sr)) / 20)
    y = x * gain
    top = float(np.max(np.abs(y))) if len(y) else 0.0
    return (y * (peak / top) if top > peak else y).astype(np.float32)


def colored_noise(n: int, color: str, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS noise: white (flat), pink (1/f power) or brown (1/f^2 power), with nothing below
    NOISE_LOW_CUT_HZ. Without that cut, brown noise puts nearly all its power in the lowest FFT bins
    (a drift of a fraction of a hertz): at a broadband SNR of 0 dB a 3 s clip was 22 dB under the
    speech above 20 Hz, and a 10 s clip 31 dB, so "noisy" clips sounded clean."""
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    audible = freqs >= NOISE_LOW_CUT_HZ
    shaped = np.where(audible, spec / np.maximum(freqs, NOISE_LOW_CUT_HZ) ** exponent, 0.0)
    if not audible.any():  # shorter than one period of the cut: nothing to shape
        shaped = spec
    y = np.fft.irfft(shaped, n)
    return (y / (np.sqrt(np.mean(y**2)) + EPS)).astype(np.float32)


def hum(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS mains hum (50 or 60 Hz with decaying harmonics)."""
    base = rng.choice([50.0, 60.0])
    t = np.arange(n) / sr
    y = sum((0.6**k) * np.sin(2 * np.pi * base * (k + 1) * t + rng.uniform(0, 2 * np.pi)) for k in range(5))
    return (y / (np.sqrt(np.mean(y**2)) + EPS)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """speech + noise scaled so active-speech power / noise power = snr_db (noise tiled or cut)."""
    if len(noise) < len(speech):
        noise = np.tile(noise, int(np.ceil(len(speech) / len(noise))))
    noise = noise[: len(speech)].astype(np.float64)
    speech_power = 10 ** (active_rms_dbfs(speech, sr) / 10)
    noise_power = float(np.mean(noise**2)) + EPS
    scale = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (speech + scale * noise).astype(np.float32)


# ------------------------------------------------------------------ rooms and channels

ROOM_PREDELAY_S = 0.003  # gap between the direct path and the first reflections
BAND_ORDER = 4  # steepness of band_limit's edges (Butterworth-like magnitude, 24 dB/octave)


def room_tone(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS background of a quiet room: white, pink or brown noise (the colours added noise has
    too, so a clip's noise label can only come from its level), sometimes with faint mains hum."""
    y = colored_noise(n, ("white", "pink", "brown")[int(rng.integers(3))], rng, sr).astype(np.float64)
    if rng.random() < 0.3:
        y += 0.3 * hum(n, rng, sr)
    return (y / (np.sqrt(np.mean(y**2)) + EPS)).astype(np.float32)


def room_response(rt60_s: float, direct_to_reverb_db: float, rng: np.random.Generator,
                  sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: a unit direct path, then Gaussian noise whose energy falls
    60 dB in `rt60_s`, scaled so the direct path has `direct_to_reverb_db` more energy than the tail."""
    if rt60_s <= 0:
        raise ValueError(f"rt60_s must be > 0, got {rt60_s}")
    t = np.arange(max(1, int(rt60_s * sr))) / sr
    tail = rng.standard_normal(len(t)) * 10 ** (-3.0 * t / rt60_s)  # amplitude: -60 dB at rt60
    tail *= np.sqrt(10 ** (-direct_to_reverb_db / 10) / np.sum(tail**2))
    return np.concatenate([[1.0], np.zeros(int(ROOM_PREDELAY_S * sr)), tail])


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x filtered by the impulse response h (FFT convolution), cut to x's length."""
    n = len(x) + len(h) - 1
    size = 1 << max(0, n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return y.astype(np.float32)


def band_limit(x: np.ndarray, low_hz: float, high_hz: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """x with what lies outside [low_hz, high_hz] rolled off (zero phase), as a microphone or a
    telephone line passes it."""
    if not 0 < low_hz < high_hz:
        raise ValueError(f"need 0 < low_hz < high_hz, got {low_hz}, {high_hz}")
    f = np.fft.rfftfreq(len(x), 1 / sr)
    f[0] = f[1] if len(f) > 1 else 1.0
    gain = 1 / np.sqrt((1 + (low_hz / f) ** (2 * BAND_ORDER)) * (1 + (f / high_hz) ** (2 * BAND_ORDER)))
    return np.fft.irfft(np.fft.rfft(x) * gain, len(x)).astype(np.float32)


# ------------------------------------------------------------------ non-speech sounds


def _env(n: int, sr: int, fade_s: float = 0.01) -> np.ndarray:
    k = max(1, min(n // 2, int(fade_s * sr)))
    e = np.ones(n)
    e[:k] = np.linspace(0, 1, k)
    e[-k:] = np.linspace(1, 0, k)
    return e


def make_sound(kind: str, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A unit-peak-ish non-speech clip of `kind` (see SOUND_KINDS); silence is all zeros."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "tone":
        y = np.sin(2 * np.pi * rng.uniform(200, 2000) * t) * _env(n, sr)
    elif kind == "beep":
        y = np.zeros(n)
        period, length = rng.uniform(0.4, 1.0), rng.uniform(0.08, 0.25)
        freq = rng.uniform(600, 2500)
        for start in np.arange(rng.uniform(0.1, 0.4), seconds - length, period):
            a, b = int(start * sr), int((start + length) * sr)
            y[a:b] = np.sin(2 * np.pi * freq * t[: b - a]) * _env(b - a, sr, 0.005)
    elif kind == "chirp":
        f0, f1 = sorted(rng.uniform(150, 4000, size=2))
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        y = np.sin(phase) * _env(n, sr)
    elif kind == "clicks":
        y = np.zeros(n)
        rate = rng.uniform(2, 10)
        for start in np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 2) + 2)):
            a = int(start * sr)
            if a + 80 >= n:
                break
            y[a : a + 80] += rng.standard_normal(80) * np.exp(-np.arange(80) / 12)
    elif kind in ("white noise", "pink noise", "brown noise"):
        y = colored_noise(n, kind.split()[0], rng, sr) * _env(n, sr) / 3
    elif kind == "hum":
        y = hum(n, rng, sr) * _env(n, sr) / 2
    elif kind == "chord":
        root = rng.uniform(110, 440)
        ratios = [1.0, 1.25, 1.5] if rng.random() < 0.5 else [1.0, 1.2, 1.5]  # major / minor triad
        y = sum(np.sin(2 * np.pi * root * r * t) for r in ratios) * _env(n, sr, 0.05) / 3
    else:
        raise ValueError(f"unknown sound kind {kind!r}; expected one of {SOUND_KINDS}")
    peak = float(np.max(np.abs(y))) or 1.0
    return (y / peak).astype(np.float32)


SOUND_KINDS = ("tone", "beep", "chirp", "clicks", "white noise", "pink noise", "brown noise", "hum", "chord",
               "silence")

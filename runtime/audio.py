"""Audio facts, loading and validation, log-mel features, and speech detection.

Everything that touches raw samples before the encoder lives here, so the rest of the
runtime can assume clean 16 kHz mono float32 in [-1, 1].

Design choices:
- Files are read with soundfile (WAV, FLAC, OGG/Vorbis, MP3 where libsndfile supports it, ...),
  downmixed by averaging channels and resampled with soxr (a band-limited resampler).
- Bad input raises `AudioError` (a `ValueError`) that names the file and the problem: missing,
  unreadable/corrupt, cut short (a WAV or MP3 holding less audio than its header announces, which
  libsndfile would otherwise read without a word), empty, non-finite samples, or longer than the
  30 s window. Nothing is truncated silently: clips longer than `MAX_AUDIO_SECONDS` are rejected
  unless the caller passes `allow_truncate=True`, in which case the cut is logged.
- Speech detection uses Silero VAD, as the reference does, from the weights the `silero-vad` package
  ships (no network, no download; `silero.py`). webrtcvad, used here before 2026-11-28, called 17 of
  23 tones, beeps, noises and clicks among the corpus's test clips speech, and Whisper wrote "you" for
  each; Silero called none of them speech and all 177 speech clips speech.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .silero import SPEECH_GAIN_DB, SPEECH_THRESHOLD, THRESHOLD, SileroVad

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Hz: everything after loading runs at this rate
MIN_SAMPLE_RATE = 8_000  # Hz: telephone audio; below it speech loses the sounds that tell words apart
MAX_SAMPLE_RATE = 384_000  # Hz: the highest rate audio interfaces record at
CHUNK_SECONDS = 30  # Whisper's fixed input window
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480_000 samples in the window
HOP_LENGTH = 160  # samples between mel frames (10 ms)
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in the window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
MAX_AUDIO_SECONDS = float(CHUNK_SECONDS)

MIN_SPEECH_MS = 150  # speech shorter than this in a whole clip counts as "no speech"


class AudioError(ValueError):
    """Bad audio input: the message names the source and what is wrong with it."""


@dataclass(frozen=True)
class Audio:
    """A validated clip: 16 kHz mono float32 samples and where they came from."""

    samples: np.ndarray  # [n_samples] float32, 16 kHz mono
    source: str  # file path or a description such as "<array>"

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def load_audio(path: str | os.PathLike, *, allow_truncate: bool = False) -> Audio:
    """Read an audio file, downmix to mono, resample to 16 kHz and validate it."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioError(f"audio path is not a file: {path}")
    return decode_audio(path.read_bytes(), source=str(path), allow_truncate=allow_truncate)


def decode_audio(raw: bytes, *, source: str = "<bytes>", allow_truncate: bool = False) -> Audio:
    """`load_audio` for the bytes of an audio file (an upload, a request body)."""
    import soundfile as sf

    if not raw:
        raise AudioError(f"{source}: the file is empty (0 bytes)")
    check_complete(raw, len(raw), source)  # before decoding what would only be thrown away
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            announced = f.frames if f.format == "MP3" else None
            data = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        why = getattr(e, "error_string", None) or str(e)
        raise AudioError(f"cannot decode audio file {source}: {why} (unsupported format or corrupt file)") from e
    if announced is not None and len(data) < announced * (1 - MP3_TOLERANCE):
        raise AudioError(f"{source}: the file is cut short: its header announces {announced} samples, it holds "
                         f"{len(data)} (an interrupted write or download?)")
    return prepare_audio(data, rate, source=source, allow_truncate=allow_truncate)


MP3_TOLERANCE = 0.05  # an MP3 frame count in its header can be an estimate (VBR): only a larger gap is an error
# what writers to a pipe put where the size is not known yet: 0, or the largest size they can write
# (0xFFFFFFFF, or about 2**31 rounded to a frame, as arecord does)
_WAV_OPEN_SIZE = 0x7FFF0000


def check_complete(head: bytes, size: int, source: str) -> None:
    """AudioError when a RIFF/WAVE file (`head`: its first bytes, through the data chunk's header;
    `size`: its length) announces more bytes of samples than it holds. libsndfile reads such a
    file without a word. Other formats, and the sizes a streaming writer leaves open, pass."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos, block = 12, 1
    while pos + 8 <= len(head):
        chunk, length = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            block = max(1, struct.unpack("<H", head[pos + 20 : pos + 22])[0])  # bytes per frame
        if chunk == b"data":
            held = size - pos - 8
            if length == 0 or length >= _WAV_OPEN_SIZE or length <= held + block:
                return
            raise AudioError(f"{source}: the file is cut short: its header announces {length} bytes of samples, "
                             f"it holds {held} ({held * 100 // length}%; an interrupted write or download?)")
        pos += 8 + length + (length & 1)  # chunks are padded to an even size


def check_sample_rate(rate: int, source: str) -> None:
    """AudioError naming `source` unless `rate` is a whole number of Hz this project resamples from."""
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AudioError(f"{source}: invalid sample rate {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{source}: unsupported sample rate {rate} Hz: expected {MIN_SAMPLE_RATE} to "
                         f"{MAX_SAMPLE_RATE} Hz")


def prepare_audio(
    data: np.ndarray,
    sample_rate: int,
    *,
    source: str = "<array>",
    allow_truncate: bool = False,
) -> Audio:
    """Validate an array of samples ([n] or [n, channels]) and bring it to 16 kHz mono."""
    data = np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise AudioError(f"{source}: samples must be numeric, got dtype {data.dtype}")
    if data.dtype.kind in "iu":
        data = _int_to_float(data)
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        data = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    elif data.ndim != 1:
        raise AudioError(
            f"{source}: expected samples shaped [n] or [n, channels], got {tuple(data.shape)}"
        )
    check_sample_rate(sample_rate, source)
    if data.size == 0:
        raise AudioError(f"{source}: audio is empty (0 samples)")
    bad = ~np.isfinite(data)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(
            f"{source}: {int(bad.sum())} non-finite (NaN/Inf) samples, first at "
            f"{first / sample_rate:.3f} s"
        )
    peak = float(np.abs(data).max())  # of the input: resampling may overshoot a full-scale signal a little
    if peak > 1.0:
        logger.warning("%s: peak amplitude %.2f > 1.0 (clipped input?)", source, peak)
    if sample_rate != SAMPLE_RATE:
        import soxr

        data = soxr.resample(data, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    duration = len(data) / SAMPLE_RATE
    if len(data) > N_SAMPLES:
        if not allow_truncate:
            raise AudioError(
                f"{source}: audio is {duration:.3f} s long ({len(data)} samples at 16 kHz); the "
                f"model's window is {MAX_AUDIO_SECONDS:.0f} s ({N_SAMPLES} samples). Split it (e.g. "
                "`desta-edge listen` segments long recordings) or pass allow_truncate=True to keep "
                "only the first 30 s."
            )
        logger.warning(
            "%s: %.2f s of audio truncated to the first %.0f s", source, duration, MAX_AUDIO_SECONDS
        )
        data = data[:N_SAMPLES]
    return Audio(samples=np.ascontiguousarray(data), source=source)


def _int_to_float(data: np.ndarray) -> np.ndarray:
    info = np.iinfo(data.dtype)
    if info.min == 0:  # unsigned: centre on zero
        mid = (info.max + 1) / 2
        return ((data.astype(np.float64) - mid) / mid).astype(np.float32)
    return (data.astype(np.float64) / -float(info.min)).astype(np.float32)


# ----------------------------------------------------------------------------- speech detection


def speech_ms(samples: np.ndarray, threshold: float = THRESHOLD, gain_db: float = 0.0) -> int:
    """Milliseconds of 16 kHz mono float audio that Silero VAD calls speech (32 ms chunks, hysteresis),
    from `threshold` on (default: Silero's own), quiet audio raised by up to `gain_db`."""
    return SileroVad(threshold, gain_db=gain_db).clip_speech_ms(samples)


def has_speech(samples: np.ndarray, *, threshold: float = SPEECH_THRESHOLD, gain_db: float = SPEECH_GAIN_DB,
               min_speech_ms: int = MIN_SPEECH_MS) -> bool:
    """The speech check: True if the clip holds at least `min_speech_ms` of speech according to Silero
    VAD, from `threshold` on, quiet audio also heard raised by up to `gain_db` (defaults: the endpointer's)."""
    return speech_ms(samples, threshold, gain_db) >= min_speech_ms


# ----------------------------------------------------------------------------- features


def check_encoder_padding(padding_s: float | None) -> None:
    """A ValueError unless `padding_s` is None (the 30 s window) or a positive number of seconds."""
    if padding_s is not None and padding_s <= 0:
        raise ValueError(f"encoder padding must be > 0 seconds (or None for the 30 s window), got {padding_s}")


def encoder_frames(n_samples: int, padding_s: float | None) -> int:
    """Mel frames the encoder reads for a clip (or a batch whose longest clip) of `n_samples`.

    None: the whole 30 s window, as Whisper was trained and the reference runs it. A number: the
    clip plus `padding_s` seconds of silence, rounded up to whole seconds, within the window. The
    encoder's cost is proportional to its input: a 3 s query with 5 s of padding costs about a
    quarter of the full window. Whisper needs that silence after the speech; with 1-3 s, tiny.en
    loops on some clips (README, "Latency").
    """
    check_encoder_padding(padding_s)
    if padding_s is None:
        return N_FRAMES
    return min(N_FRAMES, math.ceil(n_samples / SAMPLE_RATE + padding_s) * FRAMES_PER_SECOND)


class LogMel:
    """Whisper's log-mel front end, in torch (one STFT, no per-call allocation of filters).

    Computes exactly what `WhisperFeatureExtractor` computes for 30 s windows: a 400-point
    Hann STFT with hop 160, |X|^2, the Slaney mel filter bank, log10 clamped at 1e-10, the
    dynamic range limited to 8 (log10 units) below the max, then (x + 4) / 4.
    """

    N_FFT = 400

    def __init__(self, n_mels: int = 80) -> None:
        import torch
        from transformers.audio_utils import mel_filter_bank

        self.n_mels = n_mels
        filters = mel_filter_bank(
            num_frequency_bins=1 + self.N_FFT // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        self._filters = torch.from_numpy(filters.T.astype(np.float32))  # [n_mels, n_freq]
        self._window = torch.hann_window(self.N_FFT)

    def __call__(self, clips: list[np.ndarray], n_frames: int = N_FRAMES):
        """Return float32 log-mel features [batch, n_mels, n_frames] for a list of clips.

        `n_frames` < N_FRAMES gives exactly the first `n_frames` frames of the full window's
        features, as long as every clip ends at least half an FFT before the cut (checked).
        """
        import torch

        if isinstance(clips, np.ndarray):
            raise TypeError(f"expected a list of 1-D clips, got one array of shape {clips.shape}")
        if not 0 < n_frames <= N_FRAMES or n_frames % 2:
            raise ValueError(f"n_frames must be an even number in (0, {N_FRAMES}], got {n_frames}")
        n_samples = n_frames * HOP_LENGTH
        # a shorter window must end in silence, so that its last frames equal the full window's
        limit = N_SAMPLES if n_frames == N_FRAMES else n_samples - self.N_FFT // 2
        batch = torch.zeros(len(clips), n_samples)
        for i, clip in enumerate(clips):
            if len(clip) > limit:
                raise AudioError(f"clip {i} has {len(clip)} samples; a window of {n_frames} frames holds {limit}")
            batch[i, : len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
        stft = torch.stft(batch, self.N_FFT, HOP_LENGTH, window=self._window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # [B, n_freq, n_frames]
        mel = self._filters @ power  # [B, n_mels, n_frames]
        log_spec = torch.clamp(mel, min=1e-10).log10()
        floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
        log_spec = torch.maximum(log_spec, floor)
        return (log_spec + 4.0) / 4.0

"""Acoustic echo cancellation: what the loudspeaker plays, taken out of the microphone.

An assistant whose answers are spoken through a loudspeaker hears them again, and without help it
takes them for requests or for someone interrupting. Where the input carries the loudspeaker's
own signal as one more channel (the reference: a loopback channel of a sound card or of a
microphone array, or a client that interleaves what it plays with what it records),
`EchoCanceller` removes that signal's echo from the microphone before the endpointer hears it.

The canceller is WebRTC's AEC3, as the `livekit` package ships it compiled for Linux x86_64 and
aarch64 (`pip install "desta-edge[aec]"`): an adaptive filter that learns the path from the
loudspeaker to the microphone (delay, room, gain) while it plays, followed by a suppressor for
what the filter cannot model (a small loudspeaker's distortion). It works on 10 ms frames at
16 kHz; the sources here hand it both signals resampled to 16 kHz, sample-aligned as they came.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
FRAME = SAMPLE_RATE // 100  # AEC3 takes 10 ms frames


def require_aec():
    """livekit's `rtc` module, or a RuntimeError that says what to install."""
    try:
        from livekit import rtc
    except ImportError as e:
        raise RuntimeError('echo cancellation needs WebRTC\'s AEC3 from livekit: pip install "desta-edge[aec]"') from e
    return rtc



class EchoCanceller:
    """Microphone samples in, the same samples with the loudspeaker's echo removed out.

    Call it with equal-length pieces of the microphone and the reference (16 kHz float32, any
    length). It returns the cleaned microphone up to the last whole 10 ms frame it has; the rest
    waits for the next call (`flush` returns it at the end of the stream). `apm` is anything with
    livekit's `process_reverse_stream(frame)`, `process_stream(frame)` (in place) and
    `set_stream_delay_ms(ms)`; by default WebRTC's AEC3.
    """

    def __init__(self, delay_ms: int = 0, apm=None) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self._rtc = require_aec()  # its AudioFrame carries the samples either way
        # echo cancellation only: the endpointer and the model get the audio otherwise untouched
        self._apm = apm if apm is not None else self._rtc.AudioProcessingModule(echo_cancellation=True)
        self._apm.set_stream_delay_ms(delay_ms)  # a hint: AEC3 estimates the delay itself
        self._mic = np.zeros(0, np.float32)
        self._ref = np.zeros(0, np.float32)

    def __call__(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        if len(mic) != len(ref):
            raise ValueError(f"the microphone and the reference must come in equal pieces, got {len(mic)} and "
                             f"{len(ref)} samples")
        self._mic = np.concatenate([self._mic, mic.astype(np.float32, copy=False)])
        self._ref = np.concatenate([self._ref, ref.astype(np.float32, copy=False)])
        whole = len(self._mic) - len(self._mic) % FRAME
        out = np.empty(whole, np.float32)
        for i in range(0, whole, FRAME):
            out[i : i + FRAME] = self._process(self._mic[i : i + FRAME], self._ref[i : i + FRAME])
        self._mic, self._ref = self._mic[whole:], self._ref[whole:]
        return out

    def flush(self) -> np.ndarray:
        """What is left at the end of the stream (under 10 ms), cleaned."""
        n = len(self._mic)
        if not n:
            return np.zeros(0, np.float32)
        pad = np.zeros(FRAME - n, np.float32)
        out = self._process(np.concatenate([self._mic, pad]), np.concatenate([self._ref, pad]))[:n]
        self._mic, self._ref = self._mic[:0], self._ref[:0]
        return out

    def _frame(self, x: np.ndarray):
        pcm = (np.clip(x, -1.0, 32767 / 32768) * 32768).astype("<i2")
        return self._rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, len(pcm))

    def _process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        far, near = self._frame(ref), self._frame(mic)
        self._apm.process_reverse_stream(far)  # what the loudspeaker plays ...
        self._apm.process_stream(near)  # ... taken out of what the microphone hears, in place
        return np.frombuffer(near.data, dtype="<i2").astype(np.float32) / 32768.0

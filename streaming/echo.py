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

AEC3's suppressor also takes most of a person's speech out while the loudspeaker plays (double
talk): good for deciding *whether* someone speaks (its echo residue is nothing a voice detector
hears), bad for *what* they said. `SpeexCanceller` is the other half: Speex's adaptive filter
(`libspeexdsp`, with its double-talk-robust step size) and its residual-echo suppressor keep such
speech intelligible, but leave a residue of the echo that a voice detector takes for speech. Where
both are installed, `DuplexCanceller` runs the two on the same samples: the model hears Speex's
output (`Chunk.model_samples`), and the endpointer AEC3's, except where Speex's filter finds the
person louder than the echo, where it hears Speex's output too, so that a question asked over the
loudspeaker is not lost (README "Answers spoken aloud" has the figures).
"""

from __future__ import annotations

import ctypes
import ctypes.util

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


class _Framed:
    """Microphone samples in, the same samples with the loudspeaker's echo removed out.

    Call it with equal-length pieces of the microphone and the reference (16 kHz float32, any
    length). It returns the cleaned microphone up to the last whole 10 ms frame it has; the rest
    waits for the next call (`flush` returns it at the end of the stream).
    """

    def __init__(self) -> None:
        self._mic = np.zeros(0, np.float32)
        self._ref = np.zeros(0, np.float32)

    def _process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """One 10 ms frame of each: the microphone's frame, cleaned."""
        raise NotImplementedError

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


class EchoCanceller(_Framed):
    """WebRTC's AEC3 (`_Framed` says how to call it). `apm` is anything with livekit's
    `process_reverse_stream(frame)`, `process_stream(frame)` (in place) and `set_stream_delay_ms(ms)`;
    by default WebRTC's AEC3."""

    def __init__(self, delay_ms: int = 0, apm=None) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        super().__init__()
        self._rtc = require_aec()  # its AudioFrame carries the samples either way
        # echo cancellation only: the endpointer and the model get the audio otherwise untouched
        self._apm = apm if apm is not None else self._rtc.AudioProcessingModule(echo_cancellation=True)
        self._apm.set_stream_delay_ms(delay_ms)  # a hint: AEC3 estimates the delay itself

    def _frame(self, x: np.ndarray):
        pcm = _pcm16(x)
        return self._rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, len(pcm))

    def _process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        far, near = self._frame(ref), self._frame(mic)
        self._apm.process_reverse_stream(far)  # what the loudspeaker plays ...
        self._apm.process_stream(near)  # ... taken out of what the microphone hears, in place
        return np.frombuffer(near.data, dtype="<i2").astype(np.float32) / 32768.0


# libspeexdsp's request codes (speex/speex_echo.h, speex/speex_preprocess.h)
SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_PREPROCESS_SET_DENOISE = 0
SPEEX_PREPROCESS_SET_NOISE_SUPPRESS = 18
SPEEX_PREPROCESS_SET_ECHO_STATE = 24
SPEEX_TAIL_MS = 320  # the echo path the filter models: the delay plus most of a room's reverberation
TALK_DB = 3.0  # a frame is the person's where Speex's output stands this far over its echo estimate ...
TALK_AEC3_DB = 15.0  # ... and AEC3's output no further than this under Speex's
TALK_SMOOTH = 3  # frames (10 ms each) of energy averaged for those comparisons, this one and those before
TALK_HOLD_MS = 200  # how long the endpointer keeps hearing Speex's output after such a frame
TALK_LEARN_MS = 1500  # of the loudspeaker playing before any of that: Speex's filter learning the room
PLAYING_DBFS = -50.0  # a reference frame this loud or louder counts as the loudspeaker playing
_I16 = ctypes.POINTER(ctypes.c_int16)


def speexdsp():
    """The `libspeexdsp` shared library (ctypes), or a RuntimeError that says what to install."""
    name = ctypes.util.find_library("speexdsp")
    if name is None:
        raise RuntimeError("Speex echo cancellation needs libspeexdsp: apt install libspeexdsp1")
    lib = ctypes.CDLL(name)
    lib.speex_echo_state_init.restype = lib.speex_preprocess_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p, _I16, _I16, _I16]
    lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, _I16]
    for ctl in (lib.speex_echo_ctl, lib.speex_preprocess_ctl):
        ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_state_destroy.argtypes = lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
    return lib


class SpeexCanceller(_Framed):
    """Speex's echo canceller (`libspeexdsp`; `_Framed` says how to call it): its adaptive filter
    and residual-echo suppressor. The suppressor works through the preprocessor's noise-reduction
    gain, which must stay on (without it the echo residue is 5-10 dB louder); its attenuation of
    noise is capped at 1 dB, so that the model hears the room as it is."""

    def __init__(self, tail_ms: int = SPEEX_TAIL_MS) -> None:
        if tail_ms <= 0:
            raise ValueError(f"tail_ms must be > 0, got {tail_ms}")
        super().__init__()
        self._lib = lib = speexdsp()
        self._echo = lib.speex_echo_state_init(FRAME, tail_ms * SAMPLE_RATE // 1000)
        self._pre = lib.speex_preprocess_state_init(FRAME, SAMPLE_RATE)
        lib.speex_echo_ctl(self._echo, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(ctypes.c_int(SAMPLE_RATE)))
        lib.speex_preprocess_ctl(self._pre, SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo))
        lib.speex_preprocess_ctl(self._pre, SPEEX_PREPROCESS_SET_DENOISE, ctypes.byref(ctypes.c_int(1)))
        lib.speex_preprocess_ctl(self._pre, SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, ctypes.byref(ctypes.c_int(-1)))
        self._out = np.zeros(FRAME, np.int16)
        # per frame processed, the energies of what the filter took out and of the reference, where a
        # `DuplexCanceller` asks (a list)
        self.frame_energies: list[tuple[float, float]] | None = None

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.speex_preprocess_state_destroy(self._pre)
            lib.speex_echo_state_destroy(self._echo)

    def _process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        near, far = (np.ascontiguousarray(_pcm16(x)) for x in (mic, ref))
        out = self._out
        self._lib.speex_echo_cancellation(self._echo, near.ctypes.data_as(_I16), far.ctypes.data_as(_I16),
                                          out.ctypes.data_as(_I16))
        if self.frame_energies is not None:  # what the filter took out: its estimate of the echo
            self.frame_energies.append((float(np.mean((mic - out.astype(np.float32) / 32768.0) ** 2)),
                                        float(np.mean(ref**2))))
        self._lib.speex_preprocess_run(self._pre, out.ctypes.data_as(_I16))  # in place
        return out.astype(np.float32) / 32768.0


class DuplexCanceller:
    """AEC3 and Speex on the same samples: call it like `_Framed` (equal pieces of the microphone and
    the reference) and get (the endpointer's copy, the model's copy) of the whole 10 ms frames.

    The model's copy is Speex's output. The endpointer's is AEC3's, which leaves nothing of the echo
    a voice detector hears, but over double talk AEC3's suppressor takes out much of the person too
    (over an answer 2 dB louder than them, Silero found 41% of their speech in it, in
    benchmarks/echo.py --double-talk). So where the person is louder than the echo, and for
    TALK_HOLD_MS after, the endpointer hears Speex's output instead: where Speex's output stands
    TALK_DB over what its filter took out as the echo (or there is no echo), and AEC3's output is
    within TALK_AEC3_DB of it in each of the last TALK_SMOOTH frames (AEC3 kept something too).
    Until the loudspeaker has played for TALK_LEARN_MS, the endpointer hears AEC3's output only:
    before Speex's filter has learned the room its output is the echo itself, and a burst of it
    that AEC3 lets through would otherwise open the way to a quarter second of echo."""

    def __init__(self, aec: EchoCanceller | None = None, speex: SpeexCanceller | None = None) -> None:
        self.aec = aec if aec is not None else EchoCanceller()
        self.speex = speex if speex is not None else SpeexCanceller()
        self.speex.frame_energies = []  # recorded from now on, drained by each call
        self._since_talk = TALK_HOLD_MS // 10 + 1  # frames since the last of the person's, past the hold
        self._energy = np.zeros((TALK_SMOOTH, 3))  # the last frames' energies: Speex's output, its echo, AEC3's
        self._played_ms = 0  # how long the loudspeaker has played so far (up to TALK_LEARN_MS)

    def __call__(self, mic: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._merge(self.aec(mic, ref), self.speex(mic, ref))

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        return self._merge(self.aec.flush(), self.speex.flush())

    def _merge(self, aec: np.ndarray, speex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        heard = aec.copy()
        energies, self.speex.frame_energies = self.speex.frame_energies, []
        for i, (echo_energy, ref_energy) in enumerate(energies):  # a flushed last frame is shorter than FRAME
            frame = slice(i * FRAME, (i + 1) * FRAME)
            if self._played_ms < TALK_LEARN_MS:
                self._played_ms += 10 * (ref_energy >= 10 ** (PLAYING_DBFS / 10))
                continue
            self._energy = np.roll(self._energy, 1, axis=0)
            self._energy[0] = np.mean(speex[frame] ** 2), echo_energy, np.mean(aec[frame] ** 2)
            (left, took), kept = self._energy[:, :2].mean(axis=0), self._energy[:, 2].min()  # AEC3: in every frame
            person = left > took * 10 ** (TALK_DB / 10) and kept > left * 10 ** (-TALK_AEC3_DB / 10)
            self._since_talk = 0 if person else self._since_talk + 1
            if self._since_talk <= TALK_HOLD_MS // 10:
                heard[frame] = speex[frame]
        return heard, speex


def _pcm16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)

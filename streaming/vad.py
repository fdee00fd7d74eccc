"""Endpointing: a state machine that turns frames into utterances.

A speech detector calls each frame speech or not: Silero VAD by default (`runtime/silero.py`), a
small neural network that tells speech from music and steady noise, or webrtcvad (`detector=`).
Over the benchmark's backgrounds at 5-20 dB SNR, Silero left 103 merged pairs among 1,872 requests
of people where webrtcvad with the same gates left 159, with fewer split and cut at 30 s, and none
over music or steady noise (README, "Endpointing in noise"). The gates below were designed with
webrtcvad, whose verdicts the text names; with Silero they act on its verdicts in the same way.

Time is an input: the machine counts the samples it has been given and knows nothing of the
wall clock, so tests feed exact frames and never sleep.

    SILENCE ──(start_frames voiced in the last start_window)──► SPEECH
    SPEECH  ──(pause_ms of silence, min_speech_ms voiced)──► emits Pause (a speculative start may begin)
    SPEECH  ──(voiced again after a Pause)──► emits Resume (discard the speculation)
    SPEECH  ──(turn_end_ms of silence, and `turn_check` says the request is complete)──►
                emits SpeechEnd(reason="turn_complete"), back to SILENCE
    SPEECH  ──(hangover_ms of silence)──► emits SpeechEnd(reason="silence"), back to SILENCE
    SPEECH  ──(max_utterance_s reached)──► emits SpeechEnd(reason="max_length"), back to SILENCE

An utterance's audio is the pre-roll before the onset, the speech, and `tail_ms` of what follows
the last voiced frame (never the whole hangover). Where the gates engage (below), an utterance
that began on quiet background starts instead `pre_roll_ms` before its loud part. Utterances in
which the detector heard less than `min_speech_ms` of speech (clicks, coughs) are dropped with a
`Discarded` event, never sent to the model; that is counted before the gates, which take the soft
end of a short word in noise ("bat" in white noise: 480 ms heard, 140 ms left by the noise gate).

Background that webrtcvad cannot tell from speech (other people talking, a TV, loud noise at
low SNR) would keep it voiced, merge every request into one and end it only at the 30 s cut. A
noise gate guards against that: while webrtcvad has called at least `NOISE_SATURATION` of the
last `noise_window_ms` voiced, a frame counts as voiced only if it is also `noise_gate_db`
louder than the background level there (the `NOISE_FLOOR_PERCENTILE`th percentile of the
window's frame energies). The near-field talker is louder than the room; the room is not.
In quiet rooms the gate never engages. Over the babble of six synthetic talkers at 20 and
10 dB SNR, webrtcvad alone ran the benchmark questions together into 30 s cuts; with the gate
there are no cuts and every question is found, though a few neighbours still merge. Music and
a single background talker are beyond it (benchmarks/endpointing.py; README, "Endpointing in noise").
The gates also engage in a background webrtcvad takes for speech without saturating: a faint one
(a TV in the next room, quiet music, a distant crowd), at least `faint_range_db` under the talker
(the window's loud voiced frames), where webrtcvad calls at least `FAINT_FLOOR_VOICED` of the
frames at the background level voiced, or where at least `FAINT_VOICED_SHARE` of its voiced frames
lie `FAINT_BELOW_TALKER_DB` or more under the talker. Its pauses never reach the hangover, so it
carried one request into the next; in a quiet room neither holds (silence is not voiced, and
speech's own quiet frames are a small share of it).
A talker gate (`talker_drop_db`, 6 dB) goes one step further in the same background:
within an utterance, a frame more than that far below the median level of the utterance's own
voiced frames no longer continues it, so the loud moments of a crowd or of music in the gap
after a request stop carrying it into the next one. It merges fewer requests and, with requests
of people over babble and hum, splits a few more; with the 600 ms hangover that trade is worth
it, so it is on by default (it was opt-in when the hangover was 500 ms).
The median misleads when an utterance begins on a quiet background talker (a TV, people talking
across the room): until the request comes, the background's frames are the utterance's talker,
the median stays at their level, and the background carries the request into the next one. So a
frame also no longer continues an utterance when it is `loud_drop_db` (15 dB) under the
utterance's loud part: the median of its voiced frames within `LOUD_PART_DB` of their 90th
percentile, which is the request as soon as it has been heard. For a single talker the loud part
lies only a few dB above the median, and this rule gates less than the median rule does. The
utterance's audio then starts `pre_roll_ms` before the first frame within `loud_drop_db` of the
loud part, so the background heard before the request stays out of its transcript (when there
is at least `MIN_BACKGROUND_CUT_MS` of it: a request's own quiet start is shorter).
An utterance made only of such a background (the TV between two requests) is dropped with a
`Discarded` event, where the gates engage, when even its loudest voiced frame lies `distant_db`
(20 dB) or more under the talker of the last `noise_window_ms`: it is not addressed to the device.
(Its loudest frame, not its loud part: a short word's vowel may be a few frames among quiet ones.)
Until someone louder has been heard, nothing is dropped.
An opt-in spectral gate (`spectral_gate_db`) judges a frame against the background band by band
in the same background: the mean, over 16 bands from 150 Hz to 7 kHz, of the frame's
power over that band's background level (the same percentile of the window). Speech stands far
above a steady noise in the bands it occupies even when the whole frame does not, so in steady
noise (fans, engines, hiss, rumble) at 5-10 dB SNR it keeps quiet speech the level gate drops and
stops a low rumble from carrying one request into the next. In a crowd the bands of the other
talkers' speech come and go, their floors are low, and it lets too much through, which is why it
is off by default (README, "Endpointing in noise").

`turn_check(utterance) -> bool` is an optional callable (the assistant's end-of-turn detector),
asked once per pause, at the frame where the silence reaches `turn_end_ms`. The machine stays
exact: its decision depends only on the samples seen and on that answer.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from desta_edge.runtime.silero import RELEASE as SILERO_RELEASE
from desta_edge.runtime.silero import SPEECH_GAIN_DB, SPEECH_THRESHOLD, SileroVad

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
VALID_FRAME_MS = (10, 20, 30)  # the only frame lengths webrtcvad accepts
DETECTORS = ("silero", "webrtcvad")  # what decides whether a frame is speech
TURN_END_MS = 200  # default end-of-turn silence (kept between pause_ms and hangover_ms)
NOISE_SATURATION = 0.8  # share of recent frames webrtcvad calls voiced at which the noise gate engages
NOISE_FLOOR_PERCENTILE = 10  # the background level: this percentile of recent frame energies
TALKER_PERCENTILE = 90  # the talker's level in the window: this percentile of its voiced frames' energies
BACKGROUND_BAND_DB = 6.0  # frames within this of the background level are "at the background level"
FAINT_FLOOR_VOICED = 0.3  # a faint background engages the gates if webrtcvad calls this share of it voiced ...
FAINT_VOICED_SHARE = 0.25  # ... or if this share of the voiced frames lie ...
FAINT_BELOW_TALKER_DB = 25.0  # ... this far or further under the talker
# the gate judges the background once it has heard this much audio: a request at the very start
# of a stream is never gated away, at the price of taking up to this much of a loud background
# at the start for speech
NOISE_MIN_HISTORY_MS = 1000
TALKER_MIN_MS = 200  # voiced audio an utterance needs before its talker's level is trusted
LOUD_PART_DB = 15.0  # an utterance's loud part: its voiced frames within this of their TALKER_PERCENTILE
# background before the loud part is cut from an utterance's audio only when there is at least this much
# of it (beyond the pre-roll): a request's own quiet start is shorter
MIN_BACKGROUND_CUT_MS = 500
# frame energies are floored here (digital silence has no level): under any room a 16-bit microphone
# hears. At -70 (before 2026-11-29) a request at -56 dBFS was split where its soft part came within
# the noise gate's 6 dB of a floor above its own room (README, "How a recording was made").
SILENCE_DB = -90.0
SPECTRAL_FFT = 512  # FFT length of the spectral gate (covers a 30 ms frame: 480 samples)
SPECTRAL_BANDS = 16  # equal bands of the spectral gate across the speech range ...
SPECTRAL_EDGES_HZ = np.linspace(150.0, 7000.0, SPECTRAL_BANDS + 1)  # ... between these edges


@dataclass(frozen=True)
class EndpointOptions:
    # what calls a frame speech: "silero" (a small neural network; far fewer merged and split requests
    # over music and noise, README "Endpointing in noise") or "webrtcvad" (the default before 2026-11-28)
    detector: str = "silero"
    # Silero: speech from this probability on, until SILERO_RELEASE under. 0.5 (Silero's own default) before
    # 2026-11-28; at 0.4 benchmarks/endpointing.py missed 1 request of people in 1,872 instead of 4, all
    # else equal (README, "Endpointing in noise"). The model's speech check uses the same by default.
    silero_threshold: float = SPEECH_THRESHOLD
    # Silero also hears quiet audio raised by up to this many dB, for a far talker (0: off; opt-in before
    # 2026-11-29, README "Quiet, far talkers"). The level rules below (gates, distant talker) judge the
    # audio as it came.
    silero_gain_db: float = SPEECH_GAIN_DB
    aggressiveness: int = 2  # webrtcvad mode: 0 keeps most audio as speech, 3 rejects most
    frame_ms: int = 20  # frame length of the state machine (and of webrtcvad): 10, 20 or 30 ms
    start_window_ms: int = 200  # onset decision window ...
    start_voiced_ms: int = 120  # ... in which this much must be voiced to start an utterance
    pre_roll_ms: int = 300  # audio kept from before the onset, so first syllables survive
    pause_ms: int = 150  # silence after which a speculative start begins
    # silence that ends an utterance: at 500 ms, webrtcvad's drop-outs in 5-20 dB noise split 28 of
    # 1,404 requests of people in benchmarks/endpointing.py; at 600, 12 (README, "Endpointing in noise")
    hangover_ms: int = 600
    # silence that ends it early when `turn_check` says the request is complete
    # (None: TURN_END_MS, kept between pause_ms and hangover_ms)
    turn_end_ms: int | None = None
    tail_ms: int = 100  # audio kept after the last voiced frame
    # less speech than this, as the detector heard it (before the gates), is not a query (a click, a cough).
    # 250 before 2026-11-29: a short word said fast counts 140-400 ms (README, "Short words")
    min_speech_ms: int = 200
    max_utterance_s: float = 30.0  # forced cut (the model's window is 30 s)
    noise_gate_db: float = 6.0  # where the gates engage, voiced = this far above the background (0: off)
    noise_window_ms: int = 5000  # recent audio the noise gate judges the background from
    # the gates also engage in a background this far under the talker that webrtcvad takes for
    # speech without saturating (0: only in saturating background, as before 2026-11-28)
    faint_range_db: float = 20.0
    # where the gates engage, a frame this far below the utterance's own talker no longer
    # continues it (the median level of its voiced frames; 0: off)
    talker_drop_db: float = 6.0
    # where the gates engage, a frame this far below the utterance's loud part (the median of its voiced
    # frames within LOUD_PART_DB of their 90th percentile) no longer continues it either, so an utterance
    # that began on a quiet background talker ends after the request (0: off; off before 2026-11-28)
    loud_drop_db: float = 15.0
    # where the gates engage, an utterance whose loudest voiced frame lies this far under the talker of
    # the last noise_window_ms (the TALKER_PERCENTILE of its voiced frames) is background, dropped
    # (0: off; off before 2026-11-28)
    distant_db: float = 20.0
    # where the gates engage, voiced = also this far above the background on average over 16
    # frequency bands, each against its own level (0: off; for steady noise: fans, engines, hiss)
    spectral_gate_db: float = 0.0

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if not SILERO_RELEASE < self.silero_threshold < 1:
            raise ValueError(f"silero_threshold must be in ({SILERO_RELEASE}, 1), got {self.silero_threshold}")
        if not 0 <= self.silero_gain_db <= 60:
            raise ValueError(f"silero_gain_db must be in [0, 60], got {self.silero_gain_db}")
        if self.frame_ms not in VALID_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {VALID_FRAME_MS} (webrtcvad), got {self.frame_ms}")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness}")
        if not 0 < self.pause_ms <= self.hangover_ms:
            raise ValueError(f"need 0 < pause_ms <= hangover_ms, got {self.pause_ms} and {self.hangover_ms}")
        if self.turn_end_ms is None:
            object.__setattr__(self, "turn_end_ms", max(self.pause_ms, min(TURN_END_MS, self.hangover_ms)))
        if not self.pause_ms <= self.turn_end_ms <= self.hangover_ms:
            raise ValueError(f"need pause_ms <= turn_end_ms <= hangover_ms, got {self.pause_ms}, "
                             f"{self.turn_end_ms} and {self.hangover_ms}")
        if self.start_voiced_ms > self.start_window_ms:
            raise ValueError("start_voiced_ms cannot exceed start_window_ms")
        if not 0 < self.max_utterance_s <= 30.0:
            raise ValueError(f"max_utterance_s must be in (0, 30], got {self.max_utterance_s}")
        if self.tail_ms > self.pause_ms:
            raise ValueError("tail_ms must not exceed pause_ms (a speculative start must see the final audio)")
        gates = {"talker_drop_db": self.talker_drop_db, "loud_drop_db": self.loud_drop_db,
                 "distant_db": self.distant_db, "spectral_gate_db": self.spectral_gate_db,
                 "faint_range_db": self.faint_range_db}
        if min(gates.values()) < 0:
            raise ValueError(f"need {', '.join(gates)} >= 0, got {', '.join(map(str, gates.values()))}")
        if self.noise_gate_db < 0 or self.noise_window_ms < NOISE_MIN_HISTORY_MS:
            raise ValueError(f"need noise_gate_db >= 0 and noise_window_ms >= {NOISE_MIN_HISTORY_MS}, got "
                             f"{self.noise_gate_db} and {self.noise_window_ms}")
        if min(self.pre_roll_ms, self.tail_ms, self.min_speech_ms) < 0:
            raise ValueError("pre_roll_ms, tail_ms and min_speech_ms must be >= 0")

    @property
    def frame_samples(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000

    def frames(self, ms: float) -> int:
        """How many whole frames cover `ms` milliseconds (at least one)."""
        return max(1, int(round(ms / self.frame_ms)))


@dataclass(frozen=True)
class SpeechStart:
    utterance: int
    audio_s: float  # onset (first frame of the voiced run that triggered the start)


@dataclass(frozen=True)
class Pause:
    utterance: int
    audio_s: float  # when the pause was detected
    start_s: float  # start of `samples` in the stream
    samples: np.ndarray = field(repr=False)  # the utterance as it would be if it ended here


@dataclass(frozen=True)
class Resume:
    utterance: int
    audio_s: float


@dataclass(frozen=True)
class SpeechEnd:
    utterance: int
    audio_s: float  # when the end was decided
    speech_end_s: float  # end of the last voiced frame (the true end of speech, as heard)
    start_s: float  # start of the utterance's audio (with pre-roll)
    samples: np.ndarray = field(repr=False)
    reason: str  # "silence", "turn_complete" or "max_length"


@dataclass(frozen=True)
class Discarded:
    utterance: int
    audio_s: float
    voiced_ms: int  # speech the detector heard in it (before the gates)
    reason: str = "short"  # "short": too little speech to be a query; "distant": background


Event = SpeechStart | Pause | Resume | SpeechEnd | Discarded


class Endpointer:
    """Feed 16 kHz mono float32 audio with `push`; get endpointing events back."""

    def __init__(self, opts: EndpointOptions = EndpointOptions(), vad=None,
                 turn_check: Callable[[int], bool] | None = None) -> None:
        """`vad`: an object with webrtcvad's `is_speech(pcm, sample_rate)` to use instead of
        `opts.detector` (tests pass a deterministic one)."""
        self.opts = opts
        self.turn_check = turn_check
        # asked at least one frame after the Pause, so the speculative work it judges exists
        self._turn_frames = max(opts.frames(opts.turn_end_ms), opts.frames(opts.pause_ms) + 1)
        self._vad = vad if vad is not None else _detector(opts)
        self._buf = np.zeros(0, dtype=np.float32)  # samples not yet framed
        self._frame_index = 0  # frames seen
        # (frame, its level in dB) before an utterance starts: the pre-roll and the onset window
        self._history: deque[tuple[np.ndarray, float]] = deque(
            maxlen=opts.frames(opts.pre_roll_ms) + opts.frames(opts.start_window_ms))
        self._window: deque[bool] = deque(maxlen=opts.frames(opts.start_window_ms))
        self._next_id = 0
        self.vad_errors = 0  # frames the detector refused (counted, logged, treated as silence)
        self.gated_frames = 0  # frames webrtcvad called voiced that the noise or spectral gate judged background
        self.talker_gated_frames = 0  # voiced frames too far below the utterance's talker to continue it
        self._engaged = False  # did the gates engage at the last voiced frame?
        n = opts.frames(opts.noise_window_ms)
        self._energies: deque[float] = deque(maxlen=n)  # dB of recent frames
        self._vad_votes: deque[bool] = deque(maxlen=n)  # webrtcvad's verdicts on them
        self._bands: deque[np.ndarray] = deque(maxlen=n)  # band powers of recent frames (spectral gate)
        if opts.spectral_gate_db > 0:
            band_of = np.digitize(np.fft.rfftfreq(SPECTRAL_FFT, 1 / SAMPLE_RATE), SPECTRAL_EDGES_HZ) - 1
            self._in_band = (band_of >= 0) & (band_of < SPECTRAL_BANDS)  # FFT bins inside the bands
            self._band_of = band_of[self._in_band]  # their band
            self._window_fn = np.hanning(opts.frame_samples)
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self.in_speech = False
        self._frames: list[np.ndarray] = []  # utterance audio, frame by frame, from its start
        self._levels: list[float] = []  # dB of each of those frames
        self._start_frame = 0
        self._last_voiced = 0  # index into self._frames of the last voiced frame
        self._voiced = 0
        self._heard = 0  # frames of the utterance the detector called speech, before the gates
        self._silence = 0  # consecutive unvoiced frames
        self._paused = False
        self._talker: list[float] = []  # dB of the utterance's voiced frames, sorted

    @property
    def voiced_ms(self) -> int:
        """Voiced audio in the utterance being heard (0 between utterances)."""
        return self._voiced * self.opts.frame_ms if self.in_speech else 0

    @property
    def utterance(self) -> int:
        """Id of the utterance being heard (between utterances: the id the next one will get)."""
        return self._next_id

    def _t(self, frame_index: int) -> float:
        return frame_index * self.opts.frame_ms / 1000

    def push(self, samples: np.ndarray) -> list[Event]:
        """Add audio of any length; returns the events its complete frames produced."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples [n], got shape {x.shape}")
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x
        n = self.opts.frame_samples
        events: list[Event] = []
        usable = (len(self._buf) // n) * n
        for start in range(0, usable, n):
            events.extend(self._frame(self._buf[start : start + n]))
        self._buf = self._buf[usable:].copy()
        return events

    def flush(self) -> list[Event]:
        """End of stream: close an open utterance as if the hangover had passed."""
        if not self.in_speech:
            return []
        return self._end("silence")

    def _is_speech(self, frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        try:
            return bool(self._vad.is_speech(pcm, SAMPLE_RATE))
        except Exception as e:  # webrtcvad raises a bare Error on a bad frame
            self.vad_errors += 1
            logger.warning("the speech detector rejected frame %d (%s); counted as silence", self._frame_index, e)
            return False

    def _band_powers(self, frame: np.ndarray) -> np.ndarray:
        """Power of the frame in each band of the spectral gate: [16]."""
        power = np.abs(np.fft.rfft(frame * self._window_fn, SPECTRAL_FFT)) ** 2
        return np.bincount(self._band_of, weights=power[self._in_band], minlength=SPECTRAL_BANDS) + 1e-12

    def _gated(self, energy: float, voiced: bool, bands: np.ndarray | None) -> bool:
        """webrtcvad's verdict, overruled for frames no louder than a background it keeps calling voiced."""
        o = self.opts
        self._energies.append(energy)
        self._vad_votes.append(voiced)
        if bands is not None:
            self._bands.append(bands)
        if (not voiced or max(o.noise_gate_db, o.talker_drop_db, o.loud_drop_db, o.spectral_gate_db, o.distant_db) <= 0
                or len(self._vad_votes) < o.frames(NOISE_MIN_HISTORY_MS)):
            return voiced
        energies = np.fromiter(self._energies, float, len(self._energies))
        votes = np.fromiter(self._vad_votes, bool, len(self._vad_votes))
        background = float(np.percentile(energies, NOISE_FLOOR_PERCENTILE))
        self._engaged = bool(votes.mean() >= NOISE_SATURATION or self._faint_background(energies, votes, background))
        if not self._engaged:
            return voiced
        if o.noise_gate_db > 0 and energy < background + o.noise_gate_db:
            self.gated_frames += 1
            return False
        if bands is not None:
            floors = np.percentile(np.stack(self._bands), NOISE_FLOOR_PERCENTILE, axis=0)  # [16]
            if 10 * np.log10(np.mean(bands / floors)) < o.spectral_gate_db:
                self.gated_frames += 1
                return False
        if self.in_speech and self._below_talker(energy):
            self.talker_gated_frames += 1
            return False
        return True

    def _faint_background(self, energies: np.ndarray, votes: np.ndarray, background: float) -> bool:
        """Does webrtcvad take a background far under the talker for speech (without saturating)?"""
        if self.opts.faint_range_db <= 0:
            return False
        voiced = energies[votes]
        talker = float(np.percentile(voiced, TALKER_PERCENTILE))
        if talker - background < self.opts.faint_range_db:
            return False
        at_background = energies < background + BACKGROUND_BAND_DB
        return bool(votes[at_background].mean() >= FAINT_FLOOR_VOICED
                    or np.mean(voiced < talker - FAINT_BELOW_TALKER_DB) >= FAINT_VOICED_SHARE)

    def _below_talker(self, energy: float) -> bool:
        """Within an utterance, where the gates engage: is this frame too far below its talker?"""
        o, levels = self.opts, self._talker  # dB of the utterance's voiced frames, sorted
        if len(levels) < o.frames(TALKER_MIN_MS):
            return False
        if o.talker_drop_db > 0 and energy < levels[len(levels) // 2] - o.talker_drop_db:
            return True
        return o.loud_drop_db > 0 and energy < _loud_part(levels) - o.loud_drop_db

    def _distant(self) -> bool:
        """Where the gates engage: is the utterance far under the talker of the last few seconds?"""
        if self.opts.distant_db <= 0 or not self._engaged or not self._talker:
            return False
        votes = np.fromiter(self._vad_votes, bool, len(self._vad_votes))
        energies = np.fromiter(self._energies, float, len(self._energies))[votes]
        talker = float(np.percentile(energies, TALKER_PERCENTILE)) if energies.size else SILENCE_DB
        return self._talker[-1] < talker - self.opts.distant_db  # its loudest voiced frame

    def _frame(self, frame: np.ndarray) -> list[Event]:
        energy = max(SILENCE_DB, 10 * float(np.log10(np.mean(np.square(frame, dtype=np.float64)) + 1e-12)))
        bands = self._band_powers(frame) if self.opts.spectral_gate_db > 0 else None
        heard = self._is_speech(frame)
        voiced = self._gated(energy, heard, bands)
        if voiced and self.in_speech:
            bisect.insort(self._talker, energy)
        idx = self._frame_index
        self._frame_index += 1
        if not self.in_speech:
            self._history.append((frame, energy))
            self._window.append(voiced)
            if sum(self._window) >= self.opts.frames(self.opts.start_voiced_ms):
                return [self._start(idx)]
            return []
        self._frames.append(frame)
        self._levels.append(energy)
        self._heard += heard
        if voiced:
            self._voiced += 1
            self._last_voiced = len(self._frames) - 1
            self._silence = 0
            if self._paused:
                self._paused = False
                return [Resume(self._next_id, self._t(idx + 1))]
        else:
            self._silence += 1
        if self._silence >= self.opts.frames(self.opts.hangover_ms):
            return self._end("silence")
        if self.turn_check is not None and self._silence == self._turn_frames and self.turn_check(self._next_id):
            return self._end("turn_complete")
        if len(self._frames) >= self.opts.frames(self.opts.max_utterance_s * 1000):
            return self._end("max_length")
        # no speculative start for an utterance that would be dropped as too short if it ended here
        if (not self._paused and self._silence == self.opts.frames(self.opts.pause_ms)
                and self._heard * self.opts.frame_ms >= self.opts.min_speech_ms):
            self._paused = True
            first = self._loud_onset()
            return [Pause(self._next_id, self._t(idx + 1), self._t(self._start_frame + first), self._audio(first))]
        return []

    def _start(self, idx: int) -> SpeechStart:
        window = len(self._window)
        onset = idx - window + 1 + next(i for i, v in enumerate(self._window) if v)
        keep = min(len(self._history), (idx - onset + 1) + self.opts.frames(self.opts.pre_roll_ms))
        kept = list(self._history)[-keep:]
        self._frames, self._levels = [f for f, _ in kept], [e for _, e in kept]
        self._start_frame = idx + 1 - keep
        self._last_voiced = len(self._frames) - 1
        self._voiced = self._heard = sum(self._window)
        self._silence = 0
        self._history.clear()
        self._window.clear()
        self.in_speech = True
        return SpeechStart(self._next_id, self._t(onset))

    def _audio(self, first: int) -> np.ndarray:
        """The utterance's audio from frame `first` to `tail_ms` after its last voiced frame."""
        stop = min(len(self._frames), self._last_voiced + 1 + self.opts.frames(self.opts.tail_ms))
        return np.concatenate(self._frames[first:stop])

    def _loud_onset(self) -> int:
        """Where the gates engage: the utterance's first frame to keep, `pre_roll_ms` before its loud
        part begins, so that background heard before the request (at least MIN_BACKGROUND_CUT_MS of
        it) stays out of its audio; 0 otherwise."""
        o = self.opts
        if o.loud_drop_db <= 0 or not self._engaged or len(self._talker) < o.frames(TALKER_MIN_MS):
            return 0
        loud = np.asarray(self._levels) >= _loud_part(self._talker) - o.loud_drop_db  # [frames]
        first = int(np.argmax(loud)) - o.frames(o.pre_roll_ms)
        return first if first >= o.frames(MIN_BACKGROUND_CUT_MS) else 0

    def _end(self, reason: str) -> list[Event]:
        uid = self._next_id
        self._next_id += 1
        now = self._t(self._frame_index)
        heard_ms = self._heard * self.opts.frame_ms
        dropped = "short" if heard_ms < self.opts.min_speech_ms else "distant" if self._distant() else None
        if dropped:
            self._reset_utterance()
            return [Discarded(uid, now, heard_ms, dropped)]
        first = self._loud_onset()
        audio = self._audio(first)
        speech_end = self._t(self._start_frame + self._last_voiced + 1)
        start = self._t(self._start_frame + first)
        self._reset_utterance()
        if reason == "max_length":
            logger.warning("utterance %d reached the %.1f s limit and was cut", uid, self.opts.max_utterance_s)
        return [SpeechEnd(uid, now, speech_end, start, audio, reason)]


def _detector(opts: EndpointOptions):
    """The frame speech detector `opts` names, behind webrtcvad's `is_speech(pcm, sample_rate)`."""
    if opts.detector == "silero":
        return SileroVad(opts.silero_threshold, gain_db=opts.silero_gain_db)
    try:
        import webrtcvad
    except ImportError as e:
        raise RuntimeError("webrtcvad is missing: pip install webrtcvad-wheels") from e
    return webrtcvad.Vad(opts.aggressiveness)


def _loud_part(levels: list[float]) -> float:
    """The median of the sorted frame levels within LOUD_PART_DB of their TALKER_PERCENTILE (dB)."""
    top = levels[(len(levels) - 1) * TALKER_PERCENTILE // 100]
    start = bisect.bisect_left(levels, top - LOUD_PART_DB)
    return levels[(start + len(levels)) // 2]


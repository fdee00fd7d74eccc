"""The assistant loop: audio chunks in, endpointed utterances answered, events out.

Two threads: the caller's thread reads the source and runs the endpointer (cheap, never
blocks on the model); one worker thread runs the model, one job at a time.

Speculative start: when the endpointer reports a short pause, the worker begins the utterance
as it stands (features, encoder, ASR, prompt, LLM prefill and the first token) and then waits.
If the silence reaches the hangover with no new speech, the audio is identical and the job is
committed: its first token goes out at once. If speech resumes, the job is discarded: it stops
at its next stage boundary (`model.stream(cancelled=)`), so the next job does not wait behind it.

End-of-turn detection: the speculative job also asks the LLM whether its transcript reads as a
finished request (runtime/turn.py). When the silence reaches `turn_end_ms` (shorter than the
hangover), the endpointer asks for that verdict, waiting for it if need be, and a finished
request ends the utterance there instead of after the whole hangover.

Barge-in and false interruptions: speech with `barge_in_ms` of voiced audio during an answer stops
it (a `cancelled` event) but keeps it, suspended. If that speech proves not to be a request (the
endpointer drops it as background, or its transcript is only a backchannel such as "mhm" or
"okay"), the answer goes on where it stopped (a `resumed` event, then its tokens and `answer`);
if it is a request, the suspended answer is dropped and the request answered. Without barge-in,
a backchannel said over an answer (while it streams, or while the loudspeaker plays it) is not
answered either: it kept the speaker going, it did not ask anything.

Playback: an app that speaks the answers through a loudspeaker says when it plays (`playback`).
Speech heard while it plays (or within `echo_tail_ms` after) whose transcript reads back a recent
answer is that answer's echo, not a request: it is not answered, and an answer it stopped goes on.
With `half_duplex` the microphone is not heard at all while the loudspeaker plays.
Where the source cancels the echo itself, it may give the model its own copy of the audio
(`Chunk.model_samples`): the endpointer cuts each utterance from the samples, and the model hears
the same span of the copy.

Events are dicts: `type`, `utterance`, `audio_s` (stream position), `wall_s` (seconds since the
loop started), plus type-specific fields; see `EVENT_TYPES`. One utterance's failure becomes an
`error` event; the loop goes on.
"""

from __future__ import annotations

import difflib
import logging
import math
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from desta_edge.runtime.model import WARM_UP_TRANSCRIPT, Cancelled, DestaModel
from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM
from desta_edge.runtime.turn import TurnDetector, TurnOptions

from .sources import SAMPLE_RATE, Chunk
from .vad import Discarded, Endpointer, EndpointOptions, Pause, Resume, SpeechEnd, SpeechStart

logger = logging.getLogger(__name__)

EVENT_TYPES = ("speech_start", "speech_end", "transcript", "token", "answer", "cancelled", "resumed", "discarded",
               "skipped", "error")
TRACK_MARGIN_S = 2.0  # the model's copy of the stream keeps this much more than the longest utterance

# What a listener says to keep a speaker going, not to take the turn: an interruption whose
# transcript holds only these words and hums (or no words) does not end the answer it interrupted.
# English, as Whisper writes them ("Mm-hmm." -> "mm", "hmm"; "MMHMM" is a hum too).
BACKCHANNEL_WORDS = frozenset(
    "huh yeah yes yep yup ok okay right sure alright i see got it go on cool nice wow".split())
HUM = re.compile(r"[mh]+|u+[hm]+|a+h+|o+h+")  # mm, hmm, mhm, mmhmm, uh, um, uhm, ah, oh, ...
# What Whisper tiny.en writes for a sound it hears no words in (a hum or a chord the speech check let
# through: 6 of 8 such cuts of corpus sounds; no request of people was heard as it, README "Fillers"):
# alone in a transcript, it counts as no words.
NO_WORDS_HEARD = ("you",)

# An echo: a transcript of at least ECHO_MIN_WORDS words of which ECHO_SHARE or more read back an
# answer, in runs of at least ECHO_RUN_WORDS words in the answer's order (a shared "the" or "is" is
# not a read-back). Chosen on answers of the tiny preset played through a simulated loudspeaker and
# room (README, "Answers spoken aloud"): follow-up questions that quote the answer reach 0.67.
ECHO_MIN_WORDS = 3
ECHO_RUN_WORDS = 2
ECHO_SHARE = 0.7
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update({w: str(10 * i) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)})


@dataclass(frozen=True)
class AssistantOptions:
    system: str = ASSISTANT_SYSTEM  # system message of every turn
    prompt: str = ASSISTANT_PROMPT  # instruction after the audio
    max_new_tokens: int = 128  # cap per answer
    speculative: bool = True  # start work at the first short pause
    barge_in: bool = True  # speech during an answer cancels it ...
    barge_in_ms: int = 300  # ... once it has this much voiced audio (a short "mhm" or a click does not)
    # an answer stopped by barge-in goes on where it stopped when the interruption proves false:
    # dropped as background, or only a backchannel ("mhm", "okay"; `BACKCHANNEL_WORDS`)
    resume_false_interruptions: bool = True
    # an utterance whose transcript has no words, or only hums and hesitations ("um", "hmm"), asks
    # nothing: it is not answered (a `discarded` event with reason "filler"; `is_filler`)
    drop_fillers: bool = True
    # the talker hears the answers (a microphone, a serve client): a backchannel ("mhm", "okay") said while
    # one streams keeps it going and is not answered. False for a recording (listen's files and stdin),
    # whose talker never heard them: there every utterance is judged on its own words.
    talker_hears_answers: bool = True
    turn_detection: bool = True  # end an utterance after turn_end_ms when the LLM judges it finished
    turn_threshold: float = TurnOptions.threshold  # end-of-turn probability that counts as finished
    # False (live audio): the reader waits for a verdict at most the rest of the hangover;
    # True (a file fed as fast as possible): always, so segmentation does not depend on machine speed
    wait_for_turn_verdict: bool = False
    # requests allowed to wait for the model while it answers another; one more skips the oldest
    # waiting one (a `skipped` event), so answers stay current on a slow machine (0: no limit)
    max_waiting: int = 0
    # while the app reports that its loudspeaker plays (`Assistant.playback`), and echo_tail_ms after:
    echo_guard: bool = True  # speech whose transcript reads back a recent answer is its echo, not a request
    half_duplex: bool = False  # the microphone is not heard at all (nobody can interrupt an answer)
    echo_tail_ms: int = 500  # the room's reverberation and the audio path's delay after playback stops

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or min(self.barge_in_ms, self.max_waiting, self.echo_tail_ms) < 0:
            raise ValueError(f"need max_new_tokens >= 1, and barge_in_ms, max_waiting and echo_tail_ms >= 0, got "
                             f"{self.max_new_tokens}, {self.barge_in_ms}, {self.max_waiting} and {self.echo_tail_ms}")


@dataclass
class Stats:
    utterances: int = 0  # committed utterances sent to the model
    answers: int = 0
    errors: int = 0
    cancelled: int = 0  # answers stopped by barge-in
    resumed: int = 0  # of those, answers that went on because the interruption proved false
    backchannels: int = 0  # utterances over an answer left unanswered because they were only a backchannel
    discarded_filler: int = 0  # utterances left unanswered because they held no words or only hums
    echoes: int = 0  # utterances heard during playback left unanswered because they read back an answer
    skipped: int = 0  # requests dropped unanswered because more than max_waiting waited
    speculative_used: int = 0  # commits that reused a speculative start
    speculative_discarded: int = 0  # speculative starts thrown away because speech resumed
    discarded_short: int = 0  # too-short "utterances" (clicks)
    discarded_distant: int = 0  # utterances far under the recent talker (background speech)
    turn_ends: int = 0  # utterances ended early by the end-of-turn detector
    looped_answers: int = 0  # answers the loop guard ended after the first copy of a repeated block


@dataclass(eq=False)  # compared by identity
class _Job:
    utterance: int
    samples: np.ndarray  # as the endpointer cut it
    audio_s: float  # stream position when the job was created
    start_s: float  # stream position of the utterance's onset
    speculative: bool = False  # started at a pause, before the end was decided
    speech_end_wall: float | None = None  # wall clock when the last voiced audio arrived (set on commit)
    commit_wall: float | None = None  # wall clock when the endpointer decided the end
    decided: threading.Event = field(default_factory=threading.Event)
    turn_probability: float | None = None  # end-of-turn probability of its transcript (speculative jobs)
    turn_ms: float | None = None  # time that check took
    judged: threading.Event = field(default_factory=threading.Event)  # set once turn_probability is final
    discard: bool = False
    started: bool = False  # the worker has taken it up
    cancel: bool = False  # barge-in
    interrupted_by: int | None = None  # the utterance whose speech set `cancel`
    answering: bool = False
    over_answer: bool = False  # some of its speech was heard while an answer streamed
    model_samples: np.ndarray | None = None  # the same span as the model should hear it (`Chunk.model_samples`)


@dataclass(eq=False)
class _Suspended:
    """An answer stopped by barge-in, kept until its interruption is judged (worker thread only)."""
    job: _Job
    stream: object  # the model's AnswerStream, not iterated further yet
    pieces: Iterator[str]
    first_wall: float | None  # wall clock of its first token


class _Track:
    """The latest `capacity` samples of the chunks' `model_samples`, by stream position (main thread)."""

    def __init__(self, capacity: int) -> None:
        self._ring = np.zeros(capacity, np.float32)
        self.written = 0  # samples written since the stream began

    def write(self, x: np.ndarray) -> None:
        n, cap = len(x), len(self._ring)
        if n >= cap:
            x, self.written = x[-cap:], self.written + n - cap
            n = cap
        at = self.written % cap
        k = min(n, cap - at)
        self._ring[at : at + k], self._ring[: n - k] = x[:k], x[k:]
        self.written += n

    def span(self, start: int, n: int) -> np.ndarray | None:
        """Samples [start, start + n) of the stream, or None where they were not (all) kept."""
        if start < max(0, self.written - len(self._ring)) or start + n > self.written:
            return None
        return np.take(self._ring, np.arange(start, start + n) % len(self._ring))


class _Playback:
    """When the app's loudspeaker played, in stream time (thread-safe): the app reports it from its
    own thread; the reader asks about each frame, the worker about each utterance."""

    def __init__(self, tail_s: float) -> None:
        self.tail_s = tail_s
        self._lock = threading.Lock()
        self._spans: deque[list[float]] = deque(maxlen=64)  # [start, end] of recent playbacks; end inf while playing

    def report(self, active: bool, at_s: float) -> None:
        with self._lock:
            playing = bool(self._spans) and self._spans[-1][1] == math.inf
            if active and not playing:
                self._spans.append([at_s, math.inf])
            elif not active and playing:
                self._spans[-1][1] = at_s

    def overlaps(self, start_s: float, end_s: float) -> bool:
        """Did the loudspeaker play (or still echo) at any time in [start_s, end_s]?"""
        with self._lock:
            return any(a <= end_s and start_s < b + self.tail_s for a, b in self._spans)


@dataclass(frozen=True)
class _ResumeAfter:
    """A queue item: utterance `interruption` was dropped; the answer it stopped may go on."""
    interruption: int


class Assistant:
    def __init__(
        self,
        model,
        opts: AssistantOptions = AssistantOptions(),
        endpoint: EndpointOptions = EndpointOptions(),
        emit: Callable[[dict], None] = lambda e: None,
        clock: Callable[[], float] = time.monotonic,
        vad=None,
        turn_detector=None,
    ) -> None:
        """turn_detector: anything with `probability(transcript) -> float` (default: a
        `TurnDetector` on the model's LLM); used when speculative, turn_detection and
        endpoint.turn_end_ms < endpoint.hangover_ms."""
        self.model = model
        self.opts = opts
        if endpoint.detector == "silero" and isinstance(model, DestaModel):
            # an utterance the endpointer hears must not be called silent by the model's speech check
            model.speech_threshold = min(model.speech_threshold, endpoint.silero_threshold)
            model.speech_gain_db = max(model.speech_gain_db, endpoint.silero_gain_db)
        self._turn = None
        if opts.speculative and opts.turn_detection and endpoint.turn_end_ms < endpoint.hangover_ms:
            try:
                self._turn = turn_detector or TurnDetector(
                    model, TurnOptions(threshold=opts.turn_threshold, system=opts.system))
            except ValueError as e:
                logger.warning("end-of-turn detection is off: %s", e)
        self._turn_wait_s = (endpoint.hangover_ms - endpoint.turn_end_ms) / 1000
        self.endpointer = Endpointer(endpoint, vad=vad, turn_check=self._turn_complete if self._turn else None)
        self._emit_fn = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | _ResumeAfter | None] = queue.Queue()
        self._spec: _Job | None = None  # the pending speculative job, if any
        self._current: _Job | None = None  # the job the worker is on
        self._waiting: deque[_Job] = deque()  # committed jobs the worker has not taken up, oldest first
        self._suspended: _Suspended | None = None  # an answer stopped by barge-in (worker thread only)
        self._resume_next: _ResumeAfter | None = None  # taken by the worker before the queue (worker only)
        self._walls: deque[tuple[float, float]] = deque(maxlen=4096)  # (audio end s, wall) per chunk
        self.started_at = clock()  # clock() when run() began (or this was built); events carry wall_s relative to it
        self._audio_s = 0.0
        self._onset_s = 0.0  # onset of the utterance in progress (main thread)
        self._heard_over = -1  # the latest utterance with speech heard while an answer streamed (main thread)
        self._aborted = False  # abort() was called: the worker drops every job
        self._playback = _Playback(opts.echo_tail_ms / 1000)
        self._answers: deque[tuple[int, str]] = deque(maxlen=2)  # (utterance, text) of the latest answers
        # what the model should hear, where a source says (`Chunk.model_samples`): the longest utterance and more
        self._track = _Track(int((endpoint.max_utterance_s + TRACK_MARGIN_S) * SAMPLE_RATE))
        self.stats = Stats()

    # ------------------------------------------------------------------ events

    def _emit(self, type_: str, utterance: int | None, audio_s: float | None = None, **fields) -> None:
        event = {"type": type_}
        if utterance is not None:
            event["utterance"] = utterance
        event["audio_s"] = round(self._audio_s if audio_s is None else audio_s, 3)
        event["wall_s"] = round(self._clock() - self.started_at, 3)
        event.update(fields)
        with self._lock:
            self._emit_fn(event)

    def playback(self, active: bool) -> None:
        """Report that the app's loudspeaker started (True) or stopped (False) playing, e.g. the
        spoken answers (thread-safe; call it as the sound starts and ends). Speech heard meanwhile
        may be the answers' echo: see `AssistantOptions.echo_guard` and `half_duplex`."""
        self._playback.report(active, self._audio_s)

    def _wall_at(self, audio_s: float) -> float:
        """Wall clock when the chunk holding stream position `audio_s` arrived (main thread only)."""
        wall = None
        for end, w in reversed(self._walls):
            if end < audio_s:
                break
            wall = w
        return wall if wall is not None else self._clock()

    # ------------------------------------------------------------------ main thread

    def warm_up(self) -> float:
        """Run the model's stages once with this assistant's prompt, and the end-of-turn check, so
        that the first request is answered as fast as the next ones (`DestaModel.warm_up`). Call it
        before `run`; returns the milliseconds it took."""
        t0 = time.perf_counter()
        self.model.warm_up(self._messages)
        if self._turn is not None:
            self._turn.probability(WARM_UP_TRANSCRIPT)
        return _ms(time.perf_counter() - t0)

    def run(self, chunks: Iterable[Chunk]) -> Stats:
        """Listen until the source ends; returns counters. Blocks until every answer is done."""
        self.started_at = self._clock()
        worker = threading.Thread(target=self._worker, name="desta-edge-worker", daemon=True)
        worker.start()
        try:
            step = self.endpointer.opts.frame_samples
            for chunk in chunks:
                self._audio_s = chunk.audio_s + len(chunk.samples) / SAMPLE_RATE
                self._walls.append((self._audio_s, self._clock()))
                # frame by frame, so each event is handled before the endpointer sees later audio
                # (the end-of-turn check needs the speculative job of the Pause before it)
                for i in range(0, len(chunk.samples), step):
                    frame = chunk.samples[i : i + step]
                    heard = None if chunk.model_samples is None else chunk.model_samples[i : i + step]
                    if self.opts.half_duplex:
                        t = chunk.audio_s + i / SAMPLE_RATE
                        if self._playback.overlaps(t, t + len(frame) / SAMPLE_RATE):
                            frame = np.zeros_like(frame)  # the loudspeaker plays: nothing is heard
                            heard = None if heard is None else frame
                    if heard is not None:
                        self._track.write(heard)
                    for event in self.endpointer.push(frame):
                        self._on_event(event)
                    self._over_answer()
            for event in self.endpointer.flush():
                self._on_event(event)
        finally:
            self._drop_spec()
            self._jobs.put(None)
            worker.join()
        return self.stats

    def _on_event(self, ev) -> None:
        if isinstance(ev, SpeechStart):
            self._onset_s = ev.audio_s
            self._emit("speech_start", ev.utterance, ev.audio_s)
        elif isinstance(ev, Pause):
            if self.opts.speculative:
                self._drop_spec()
                self._spec = _Job(ev.utterance, ev.samples, ev.audio_s, self._onset_s, speculative=True,
                                  over_answer=self._heard_over == ev.utterance,
                                  model_samples=self._model_samples(ev.start_s, ev.samples))
                self._jobs.put(self._spec)
        elif isinstance(ev, Resume):
            self._drop_spec()
        elif isinstance(ev, Discarded):
            self._drop_spec()
            if self.opts.resume_false_interruptions:  # the worker resumes an answer this utterance stopped
                self._jobs.put(_ResumeAfter(ev.utterance))
            if ev.reason == "distant":
                self.stats.discarded_distant += 1
            else:
                self.stats.discarded_short += 1
            self._emit("discarded", ev.utterance, ev.audio_s, voiced_ms=ev.voiced_ms, reason=ev.reason)
        elif isinstance(ev, SpeechEnd):
            job, self._spec = self._spec, None
            extra = {}
            if job is not None and job.utterance == ev.utterance and job.judged.is_set() \
                    and job.turn_probability is not None:
                extra["turn_probability"] = round(job.turn_probability, 3)
            self.stats.turn_ends += ev.reason == "turn_complete"
            self._emit("speech_end", ev.utterance, ev.audio_s, speech_end_s=round(ev.speech_end_s, 3), reason=ev.reason,
                       **extra)
            if job is None or job.utterance != ev.utterance or not np.array_equal(job.samples, ev.samples):
                if job is not None:
                    self._discard(job)
                job = _Job(ev.utterance, ev.samples, ev.audio_s, self._onset_s,
                           over_answer=self._heard_over == ev.utterance,
                           model_samples=self._model_samples(ev.start_s, ev.samples))
                self._jobs.put(job)
            else:
                self.stats.speculative_used += 1
            job.speech_end_wall = self._wall_at(ev.speech_end_s)
            job.commit_wall = self._clock()
            self.stats.utterances += 1
            self._wait_in_line(job)
            job.decided.set()

    def _model_samples(self, start_s: float, samples: np.ndarray) -> np.ndarray | None:
        """The model's copy of an utterance's `samples` that begin at `start_s`, if the source gave one."""
        return self._track.span(round(start_s * SAMPLE_RATE), len(samples))

    def _wait_in_line(self, job: _Job) -> None:
        """Queue a committed job; past `max_waiting` waiting, the oldest is skipped (and reported)."""
        if not self.opts.max_waiting:
            return
        with self._lock:
            if not job.started:
                self._waiting.append(job)
            skipped = []
            while len(self._waiting) > self.opts.max_waiting:
                old = self._waiting.popleft()
                old.discard = True  # the worker drops it when it gets there
                skipped.append(old)
        for old in skipped:
            self.stats.skipped += 1
            self._emit("skipped", old.utterance, waiting=self.opts.max_waiting)

    def summary(self) -> dict:
        """The counters of the `summary` event: `stats` and the endpointer's frame counts."""
        ep = self.endpointer
        return {**vars(self.stats), "vad_errors": ep.vad_errors, "noise_gated_frames": ep.gated_frames,
                "talker_gated_frames": ep.talker_gated_frames}

    def report_error(self, message: str) -> None:
        """An `error` event about the stream rather than one utterance (e.g. a client's bad message)."""
        self._emit("error", None, message=message)

    def abort(self) -> None:
        """Drop every request not yet answered and stop the answer in progress (thread-safe): for a
        listener that has gone (a closed connection), so that `run` returns without answering it."""
        with self._lock:
            self._aborted = True
            jobs = [job for job in (*self._waiting, self._spec, self._current) if job is not None]
        for job in jobs:
            job.discard = job.cancel = True
            job.decided.set()

    def _over_answer(self) -> None:
        """After each frame: note speech heard while an answer streams, and cancel that answer
        (barge-in) once the speech has `barge_in_ms` of voiced audio."""
        cur, voiced_ms = self._current, self.endpointer.voiced_ms
        if cur is None or not cur.answering or voiced_ms == 0:
            return
        self._heard_over = self.endpointer.utterance
        if self.opts.barge_in and not cur.cancel and voiced_ms >= self.opts.barge_in_ms:
            cur.interrupted_by = self.endpointer.utterance
            cur.cancel = True

    def _turn_complete(self, utterance: int) -> bool:
        """The endpointer's question at `turn_end_ms` of silence: is this request finished?"""
        job = self._spec
        if job is None or job.utterance != utterance:
            return False
        timeout = None if self.opts.wait_for_turn_verdict else self._turn_wait_s
        if not job.judged.wait(timeout):  # the model is busy elsewhere: the hangover decides
            logger.debug("utterance %d: no end-of-turn verdict within %.2f s", utterance, self._turn_wait_s)
            return False
        return job.turn_probability is not None and job.turn_probability >= self.opts.turn_threshold

    def _discard(self, job: _Job) -> None:
        job.discard = True
        job.decided.set()
        self.stats.speculative_discarded += 1

    def _drop_spec(self) -> None:
        if self._spec is not None:
            self._discard(self._spec)
            self._spec = None

    # ------------------------------------------------------------------ worker thread

    def _messages(self, samples: np.ndarray) -> list[dict]:
        return [
            {"role": "system", "content": self.opts.system},
            {"role": "user", "content": f"{self.model.config.audio_locator}\n{self.opts.prompt}",
             "audios": [{"audio": (samples, SAMPLE_RATE), "text": None}]},
        ]

    def _worker(self) -> None:
        while (item := self._resume_next or self._jobs.get()) is not None:
            self._resume_next = None
            if isinstance(item, _ResumeAfter):
                s = self._suspended
                if s is None or s.job.interrupted_by != item.interruption:
                    continue  # nothing it stopped, or a request since has ended that answer
                job, work = s.job, self._resume
            else:
                job, work = item, self._answer
                with self._lock:
                    job.discard |= self._aborted
                    job.started = not job.discard
                    if job in self._waiting:
                        self._waiting.remove(job)
                if job.discard:
                    job.judged.set()
                    continue
            self._current = job
            try:
                work(job)
            except Cancelled:  # speech resumed while the speculative job ran: stopped between stages
                job.judged.set()
            except Exception as e:  # one bad utterance must not stop the loop
                self.stats.errors += 1
                logger.exception("utterance %d failed", job.utterance)
                job.judged.set()  # no verdict; the endpointer may be waiting for one
                job.decided.wait()
                if not job.discard:
                    self._emit("error", job.utterance, message=f"{type(e).__name__}: {e}")
            finally:
                self._current = None
        self._drop_suspended()

    def _drop_suspended(self) -> None:
        if self._suspended is not None:
            self._suspended.stream.cancel()
            self._suspended = None

    def _resume(self, job: _Job) -> None:
        """Go on with `job`'s suspended answer: its interruption was not a request."""
        s, self._suspended = self._suspended, None
        if self._aborted:
            s.stream.cancel()
            return
        self.stats.resumed += 1
        self._emit("resumed", job.utterance, text=s.stream.text, interruption=job.interrupted_by)
        job.cancel, job.interrupted_by = False, None
        self._stream_out(job, s.stream, s.pieces, s.first_wall, resumed=True)

    def _answer(self, job: _Job) -> None:
        samples = job.samples if job.model_samples is None else job.model_samples
        stream = self.model.stream(self._messages(samples), max_new_tokens=self.opts.max_new_tokens,
                                   cancelled=lambda: job.discard)
        if job.discard:
            raise Cancelled("discarded before the prefill")
        pieces = iter(stream)
        first = next(pieces, None)  # prefill + first token, possibly before the commit
        if job.speculative and self._turn is not None and not job.decided.is_set():
            # after the first token: a verdict cannot end the turn before the answer is ready anyway,
            # and it is skipped once the hangover (or new speech) has decided
            t0 = time.perf_counter()
            job.turn_probability = self._turn.probability(stream.audios[0][1])
            job.turn_ms = _ms(time.perf_counter() - t0)
        job.judged.set()
        job.decided.wait()
        if job.discard:
            stream.cancel()
            return
        transcript = stream.audios[0][1]
        if why := self._not_a_request(job, transcript):
            stream.cancel()
            self._emit("discarded", job.utterance, **why, transcript=transcript)
            return
        job.answering = True
        self._emit("transcript", job.utterance, text=transcript)
        first_wall = None
        if first is not None:
            first_wall = self._clock()
            self._emit("token", job.utterance, text=first)
        self._stream_out(job, stream, pieces, first_wall)

    def _not_a_request(self, job: _Job, transcript: str) -> dict | None:
        """Why a committed utterance asks nothing (`reason` "echo", "backchannel" or "filler", with
        `echo_of` for an echo), or None for a request. A request ends the answer suspended by
        barge-in; an interruption that asks nothing resumes it next. A backchannel counts only when
        said over an answer: after one, "yes" or "okay" may answer a question the assistant asked."""
        s = self._suspended
        interrupted = s is not None and s.job.interrupted_by == job.utterance
        # said over an answer without stopping it: backchannel words (no words at all: a filler, below)
        over_answer = (self.opts.talker_hears_answers and _words(transcript)
                       and (job.over_answer or self._playback.overlaps(job.start_s, job.audio_s)))
        if (echo_of := self._echo_of(job, transcript)) is not None:
            self.stats.echoes += 1
            why = {"reason": "echo", "echo_of": echo_of}
        elif (interrupted or over_answer) and is_backchannel(transcript):
            self.stats.backchannels += 1
            why = {"reason": "backchannel"}
        elif self.opts.drop_fillers and is_filler(transcript):
            self.stats.discarded_filler += 1
            why = {"reason": "filler"}
        else:
            self._drop_suspended()
            return None
        if interrupted:
            self._resume_next = _ResumeAfter(job.utterance)  # the worker's next item
        return why

    def _echo_of(self, job: _Job, transcript: str) -> int | None:
        """The utterance whose answer `transcript` reads back, if the job was heard during playback."""
        if not self.opts.echo_guard or not self._playback.overlaps(job.start_s, job.audio_s):
            return None
        answers = list(self._answers)
        if self._suspended is not None:
            answers.append((self._suspended.job.utterance, self._suspended.stream.text))
        return next((u for u, text in reversed(answers) if is_echo(transcript, text)), None)

    def _remember(self, job: _Job, text: str) -> None:
        """Keep what was said in answer to `job` (as far as it was streamed), for the echo guard."""
        if self._answers and self._answers[-1][0] == job.utterance:
            self._answers.pop()
        self._answers.append((job.utterance, text))

    def _stream_out(self, job: _Job, stream, pieces: Iterator[str], first_wall: float | None,
                    resumed: bool = False) -> None:
        """Stream the rest of an answer and report it, or stop at barge-in (suspended to resume)."""
        while not job.cancel:  # no piece is taken from the model once barge-in has stopped the answer
            if (piece := next(pieces, None)) is None:
                break
            self._emit("token", job.utterance, text=piece)
        else:  # stopped by barge-in, not by the end of the answer
            self.stats.cancelled += 1
            self._remember(job, stream.text)
            self._emit("cancelled", job.utterance, text=stream.text)
            if self.opts.resume_false_interruptions and not self._aborted:
                self._suspended = _Suspended(job, stream, pieces, first_wall)
            else:
                stream.cancel()
            return
        end_wall = self._clock()
        t = stream.timings_ms
        timings = {
            "endpoint_wait": _ms(job.commit_wall - job.speech_end_wall),
            "features": t["features"],
            "encoder": t["encoder"],
            "asr": t["asr"],
            "prefill": t["prefill"],
            **({"turn_check": job.turn_ms} if job.turn_ms is not None else {}),
            "first_token": _ms((first_wall or end_wall) - job.speech_end_wall),
            "total": _ms(end_wall - job.speech_end_wall),
        }
        self.stats.answers += 1
        self.stats.looped_answers += stream.looped
        self._remember(job, stream.text)
        self._emit("answer", job.utterance, text=stream.text, transcript=stream.audios[0][1], timings_ms=timings,
                   speculative=job.speculative, **({"looped": True} if stream.looped else {}),
                   **({"resumed": True} if resumed else {}))


def _words(transcript: str) -> list[str]:
    words = re.findall(r"[\w']+", transcript.lower().replace("-", " "))  # any script: "¿Qué hora es?" has words
    return [] if tuple(words) == NO_WORDS_HEARD else words


def echo_share(transcript: str, answer: str) -> float:
    """The share of the transcript's words that read back `answer`: those in runs of at least
    `ECHO_RUN_WORDS` words that the answer has in the same order (numbers as digits: "ten" = "10")."""
    heard, said = ([NUMBER_WORDS.get(w, w) for w in _words(t)] for t in (transcript, answer))
    if not heard:
        return 0.0
    blocks = difflib.SequenceMatcher(None, heard, said, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= ECHO_RUN_WORDS) / len(heard)


def is_echo(transcript: str, answer: str) -> bool:
    """Is `transcript` the answer read back (heard from the loudspeaker that speaks it)?"""
    return len(_words(transcript)) >= ECHO_MIN_WORDS and echo_share(transcript, answer) >= ECHO_SHARE


def is_backchannel(transcript: str) -> bool:
    """Does `transcript` hold only `BACKCHANNEL_WORDS` and hums (or no words at all: a cough, a laugh)?"""
    words = _words(transcript)
    return len(words) <= 4 and all(w in BACKCHANNEL_WORDS or HUM.fullmatch(w) for w in words)


def is_filler(transcript: str) -> bool:
    """Does `transcript` hold no words, or only hums and hesitations ("Um.", "Hmm...")?"""
    return all(HUM.fullmatch(w) for w in _words(transcript))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)

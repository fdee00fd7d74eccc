"""The assistant loop: events, speculative start and discard, barge-in, error survival, parity
with offline answers. Audio is fed as fast as the loop takes it; time comes from the samples."""

import threading
import time

import numpy as np
import pytest

from streaming_helpers import EnergyVad, signal
from test_model import speechlike
from desta_edge.runtime.model import WARM_UP_TRANSCRIPT
from desta_edge.streaming.assistant import (EVENT_TYPES, Assistant, AssistantOptions, _Track, echo_share,
                                             is_backchannel, is_echo, is_filler)
from desta_edge.streaming.sources import Chunk
from desta_edge.streaming.vad import EndpointOptions

N = 320  # 20 ms chunks


def tone_opts(**fields) -> AssistantOptions:
    """Options for a loop fed sine tones: they stand in for speech here, but the model's speech
    check hears no words in them, so the filler drop (tested on its own) is off."""
    return AssistantOptions(**{"drop_fillers": False, **fields})


def chunks_of(x: np.ndarray, before_chunk=None):
    for i in range(0, len(x), N):
        if before_chunk is not None:
            before_chunk(i / 16000)
        yield Chunk(x[i : i + N], i / 16000)


def listen(model, x, opts=tone_opts(max_new_tokens=6, turn_detection=False), before_chunk=None, turn=None,
           endpoint=EndpointOptions()):
    events = []
    a = Assistant(model, opts, endpoint, emit=events.append, vad=EnergyVad(), turn_detector=turn)
    stats = a.run(chunks_of(x, before_chunk))
    return events, stats


def test_event_stream_schema_and_answers(tiny_model):
    x = signal(("s", 0.5), ("v", 0.8), ("s", 1.0), ("v", 0.6), ("s", 1.0))
    events, stats = listen(tiny_model, x)
    assert stats.answers == 2 and stats.errors == 0 and stats.utterances == 2
    for e in events:
        assert e["type"] in EVENT_TYPES
        assert isinstance(e["audio_s"], float) and isinstance(e["wall_s"], float)
        assert isinstance(e["utterance"], int)
    kinds = [e["type"] for e in events if e["type"] != "token"]
    assert kinds.count("speech_start") == 2 and kinds.count("speech_end") == 2 and kinds.count("answer") == 2
    answers = [e for e in events if e["type"] == "answer"]
    assert [a["utterance"] for a in answers] == [0, 1]
    for a in answers:
        assert set(a["timings_ms"]) == {"endpoint_wait", "features", "encoder", "asr", "prefill", "first_token", "total"}
        assert a["timings_ms"]["endpoint_wait"] >= 0 and a["speculative"] is True
        tokens = "".join(e["text"] for e in events if e["type"] == "token" and e["utterance"] == a["utterance"])
        assert tokens == a["text"]
    ends = [e for e in events if e["type"] == "speech_end"]
    assert [e["speech_end_s"] for e in ends] == [1.3, 2.9]


def test_streaming_answer_equals_the_offline_answer(tiny_model):
    """Same audio, same model: the loop's answer is what generate() gives on the utterance."""
    x = signal(("s", 0.5), ("v", 0.8), ("s", 1.0))
    events, _ = listen(tiny_model, x)
    answer = next(e for e in events if e["type"] == "answer")
    utt = x[int(0.2 * 16000) : int(1.4 * 16000)]  # pre-roll + speech + tail, as the endpointer cuts it
    opts = tone_opts()
    offline = tiny_model.generate([
        {"role": "system", "content": opts.system},
        {"role": "user", "content": f"<|AUDIO|>\n{opts.prompt}", "audios": [{"audio": (utt, 16000), "text": None}]},
    ], max_new_tokens=6)
    assert answer["text"] == offline.text[0] and answer["transcript"] == offline.audios[0][1]


def test_a_looping_answer_is_ended_counted_and_marked(tiny_model):
    """The tiny random LLM loops: with a 64-token cap the guard ends the answer early, the answer
    event says so, and the summary counts it; a 6-token answer is too short to be cut or marked."""
    x = signal(("s", 0.5), ("v", 0.8), ("s", 1.0))
    events, stats = listen(tiny_model, x, tone_opts(max_new_tokens=64, turn_detection=False))
    (answer,) = [e for e in events if e["type"] == "answer"]
    assert answer["looped"] is True and stats.looped_answers == 1
    streamed = [e for e in events if e["type"] == "token"]
    assert len(streamed) < 64  # stopped when the loop was found, not at the cap
    events, stats = listen(tiny_model, x, tone_opts(max_new_tokens=6, turn_detection=False))
    (answer,) = [e for e in events if e["type"] == "answer"]
    assert "looped" not in answer and stats.looped_answers == 0  # 6 tokens cannot loop


def test_speculation_is_discarded_when_speech_resumes(tiny_model):
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.3), ("v", 0.6), ("s", 1.0))  # 300 ms pause < 500 ms hangover
    events, stats = listen(tiny_model, x)
    assert stats.speculative_discarded == 1 and stats.speculative_used == 1
    assert stats.answers == 1 and [e["type"] for e in events].count("transcript") == 1  # nothing from the stale job


def test_without_speculation_the_answer_is_the_same(tiny_model):
    x = signal(("s", 0.5), ("v", 0.8), ("s", 1.0))
    spec, _ = listen(tiny_model, x)
    plain, stats = listen(tiny_model, x, tone_opts(max_new_tokens=6, speculative=False))
    get = lambda ev: next(e["text"] for e in ev if e["type"] == "answer")
    assert get(spec) == get(plain) and stats.speculative_used == 0
    assert next(e for e in plain if e["type"] == "answer")["speculative"] is False


class SlowModel:
    """A fake model whose answers stream until cancelled (or 40 pieces), and which can fail."""

    class config:
        audio_locator = "<|AUDIO|>"

    def __init__(self, fail_first=False, transcripts=()):
        self.fail_first = fail_first
        self.transcripts = transcripts  # what the n-th call hears ("hello" past the list)
        self.calls = 0
        self.streams = []

    def stream(self, messages, max_new_tokens, cancelled=None):
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise ValueError("corrupt utterance")
        heard = self.transcripts[self.calls - 1] if self.calls <= len(self.transcripts) else "hello"
        s = FakeStream(heard)
        self.streams.append(s)
        return s


class FakeStream:
    def __init__(self, transcript="hello"):
        self.audios = [("<array>", transcript)]
        self.text = ""
        self.timings_ms = {k: 1.0 for k in ("features", "encoder", "asr", "prefill", "first_token", "total")}
        self.cancelled = False
        self.looped = False
        self.started = threading.Event()

    def cancel(self):
        self.cancelled = True

    def __iter__(self):
        for i in range(40):
            if self.cancelled:
                return
            self.text += "x"
            yield "x"
            self.started.set()
            time.sleep(0.01)


def hold_until_answering(model, at_s: float):
    """A `before_chunk` hook: at stream position `at_s`, wait until the first answer streams."""
    def hook(audio_s):
        if audio_s == pytest.approx(at_s):
            deadline = time.monotonic() + 5
            while not model.streams and time.monotonic() < deadline:
                time.sleep(0.005)
            assert model.streams and model.streams[0].started.wait(5)
    return hook


def test_barge_in_cancels_the_answer_in_progress():
    model = SlowModel()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.6), ("s", 1.0))
    # the second utterance is held back until the first answer streams
    events, stats = listen(model, x, tone_opts(barge_in=True), before_chunk=hold_until_answering(model, 1.9))
    assert stats.resumed == 0  # "hello" is a request, not a backchannel
    cancelled = [e for e in events if e["type"] == "cancelled"]
    assert stats.cancelled == 1 and cancelled[0]["utterance"] == 0 and model.streams[0].cancelled
    assert stats.answers == 1 and next(e for e in events if e["type"] == "answer")["utterance"] == 1


BARGE_IN = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.6), ("s", 1.0))  # the second request held (below)


@pytest.mark.parametrize("heard", ["Mm-hmm.", "Okay, yeah.", "uh huh", " "])
def test_an_answer_stopped_by_a_backchannel_goes_on_where_it_stopped(heard):
    """Barge-in stops the answer at once; the interruption turns out to be "mhm" (or no words at
    all: a cough): it is not answered, and the first answer goes on, nothing lost or repeated."""
    model = SlowModel(transcripts=["hello", heard])
    events, stats = listen(model, BARGE_IN, tone_opts(barge_in=True), before_chunk=hold_until_answering(model, 1.9))
    kinds = [(e["type"], e["utterance"]) for e in events if e["type"] not in ("token", "speech_start", "speech_end")]
    assert kinds == [("transcript", 0), ("cancelled", 0), ("discarded", 1), ("resumed", 0), ("answer", 0)]
    (back,) = [e for e in events if e["type"] == "discarded"]
    assert back["reason"] == "backchannel" and back["transcript"] == heard
    (resumed,) = [e for e in events if e["type"] == "resumed"]
    (cancelled,) = [e for e in events if e["type"] == "cancelled"]
    assert resumed["interruption"] == 1 and resumed["text"] == cancelled["text"] and 0 < len(cancelled["text"]) < 40
    (answer,) = [e for e in events if e["type"] == "answer"]
    tokens = "".join(e["text"] for e in events if e["type"] == "token")
    assert answer["text"] == tokens == "x" * 40 and answer["resumed"] is True
    assert (stats.cancelled, stats.resumed, stats.backchannels, stats.answers) == (1, 1, 1, 1)
    assert not model.streams[0].cancelled and model.streams[1].cancelled


class _BreaksLate(FakeStream):
    def __iter__(self):
        for i, piece in enumerate(super().__iter__()):
            if i == 30:
                raise RuntimeError("the backend went away")
            yield piece


def test_a_resumed_answer_that_fails_is_reported_under_its_own_utterance():
    model = SlowModel(transcripts=["hello", "Mm-hmm."])
    model_stream = model.stream

    def stream(messages, max_new_tokens, cancelled=None):  # the first answer breaks after 30 pieces
        s = model_stream(messages, max_new_tokens, cancelled)
        if model.calls == 1:
            s.__class__ = _BreaksLate
        return s

    model.stream = stream
    events, stats = listen(model, BARGE_IN, tone_opts(barge_in=True), before_chunk=hold_until_answering(model, 1.9))
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["utterance"] == 0 and "the backend went away" in error["message"]
    assert stats.resumed == 1 and stats.errors == 1 and stats.answers == 0


def test_a_request_that_interrupts_drops_the_stopped_answer():
    model = SlowModel(transcripts=["hello", "Okay, stop. What time is it?"])
    events, stats = listen(model, BARGE_IN, tone_opts(barge_in=True), before_chunk=hold_until_answering(model, 1.9))
    assert [e["utterance"] for e in events if e["type"] == "answer"] == [1]
    assert stats.resumed == 0 and stats.backchannels == 0 and model.streams[0].cancelled
    assert not [e for e in events if e["type"] in ("resumed", "discarded")]


def test_without_resume_a_backchannel_stops_the_answer_for_good_and_is_not_answered():
    model = SlowModel(transcripts=["hello", "Mm-hmm."])
    events, stats = listen(model, BARGE_IN, tone_opts(barge_in=True, resume_false_interruptions=False),
                           before_chunk=hold_until_answering(model, 1.9))
    assert not [e for e in events if e["type"] == "answer"] and stats.resumed == 0
    assert model.streams[0].cancelled and stats.backchannels == 1


def test_an_answer_stopped_by_speech_the_endpointer_drops_goes_on():
    """Barge-in after 100 ms of voiced audio; the interruption (160 ms) is too short to be a request:
    the endpointer drops it, and the answer goes on without the model hearing it."""
    model = SlowModel()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.16), ("s", 1.0))
    events, stats = listen(model, x, tone_opts(barge_in=True, barge_in_ms=100),
                           before_chunk=hold_until_answering(model, 1.9))
    kinds = [e["type"] for e in events if e["type"] not in ("token", "speech_start", "speech_end")]
    # fed faster than real time, the drop may come before the worker reports the stop
    assert sorted(kinds[1:3]) == ["cancelled", "discarded"] and kinds[::3] == ["transcript", "resumed"]
    assert kinds[-1] == "answer" and len(kinds) == 5
    assert next(e for e in events if e["type"] == "discarded")["reason"] == "short"
    assert next(e for e in events if e["type"] == "answer")["text"] == "x" * 40
    assert not model.streams[0].cancelled and (stats.cancelled, stats.resumed, stats.backchannels) == (1, 1, 0)


def test_the_model_hears_the_sources_own_copy_of_each_utterance():
    """A source that hands the model its own copy of the audio (`Chunk.model_samples`, as echo
    cancellation does): the endpointer cuts the utterance from `samples`, and the model gets the
    same span of the copy, for speculative and committed work alike."""
    model = SlowModel()
    heard, stream = [], model.stream

    def recording(messages, max_new_tokens, cancelled=None):
        heard.append(messages[1]["audios"][0]["audio"][0])
        return stream(messages, max_new_tokens, cancelled)

    model.stream = recording
    x = signal(("s", 0.5), ("v", 0.8), ("s", 1.0), ("v", 0.6), ("s", 0.3), ("v", 0.4), ("s", 1.0))
    copy = np.arange(len(x), dtype=np.float32)  # each sample says where it came from
    chunks = (Chunk(x[i : i + N], i / 16000, copy[i : i + N]) for i in range(0, len(x), N))
    opts = tone_opts(max_new_tokens=6, turn_detection=False, barge_in=False)
    stats = Assistant(model, opts, vad=EnergyVad()).run(chunks)
    assert stats.answers == 2 and stats.speculative_discarded == 1  # the second request paused, then went on
    assert np.array_equal(heard[0], copy[int(0.2 * 16000) : int(1.4 * 16000)])  # pre-roll + speech + tail
    assert np.array_equal(heard[-1], copy[int(2.0 * 16000) : int(3.7 * 16000)])  # both of its parts


def test_the_models_copy_is_kept_in_a_ring_of_the_latest_samples():
    track = _Track(10)
    for piece in (np.arange(0, 4), np.arange(4, 9), np.arange(9, 16), np.arange(16, 40)):  # the last one wraps twice
        track.write(piece.astype(np.float32))
        assert track.written == piece[-1] + 1
        assert np.array_equal(track.span(piece[-1] - 3, 4), np.arange(piece[-1] - 3, piece[-1] + 1))
    assert track.span(29, 11) is None and track.span(35, 6) is None  # overwritten; not written yet
    assert np.array_equal(track.span(30, 10), np.arange(30, 40))


class PacedModel:
    """A real model whose answer pieces come 50 ms apart, so that barge-in lands mid-answer."""

    def __init__(self, model):
        self.model, self.config, self.streams = model, model.config, []

    def stream(self, messages, max_new_tokens, cancelled=None):
        self.streams.append(_Paced(self.model.stream(messages, max_new_tokens=max_new_tokens, cancelled=cancelled)))
        return self.streams[-1]


class _Paced:
    def __init__(self, stream):
        self._stream, self.started = stream, threading.Event()

    def __getattr__(self, name):  # audios, text, timings_ms, looped, cancel
        return getattr(self._stream, name)

    def __iter__(self):
        for piece in self._stream:
            yield piece
            self.started.set()
            time.sleep(0.05)


def test_a_resumed_answer_is_the_answer_given_without_the_interruption(tiny_model):
    """The model's own stream, suspended at barge-in and resumed after the interruption was dropped,
    ends as the same answer does with no interruption at all."""
    model = PacedModel(tiny_model)
    opts = tone_opts(max_new_tokens=24, turn_detection=False, barge_in=True, barge_in_ms=100)
    plain, _ = listen(model, signal(("s", 0.5), ("v", 0.6), ("s", 2.0)), opts)
    model.streams.clear()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.16), ("s", 1.0))
    events, stats = listen(model, x, opts, before_chunk=hold_until_answering(model, 1.9))
    assert stats.cancelled == 1 and stats.resumed == 1 and not model.streams[0].cancelled
    answer = next(e for e in events if e["type"] == "answer")
    assert answer["text"] == next(e for e in plain if e["type"] == "answer")["text"]
    assert "".join(e["text"] for e in events if e["type"] == "token") == answer["text"]


def test_an_utterance_of_hums_or_no_words_is_not_answered(tiny_model):
    """"Um." before a request, and a tone the speech check hears no words in: `discarded` events
    with reason "filler", not answers; with drop_fillers off both are answered, as before."""
    model = SlowModel(transcripts=["Um.", "hello"])
    x = signal(("s", 0.5), ("v", 0.6), ("s", 1.0), ("v", 0.6), ("s", 1.0))
    events, stats = listen(model, x, AssistantOptions(barge_in=False, turn_detection=False))
    (dropped,) = [e for e in events if e["type"] == "discarded"]
    assert dropped == {**dropped, "utterance": 0, "reason": "filler", "transcript": "Um."}
    assert [e["utterance"] for e in events if e["type"] == "answer"] == [1] and stats.discarded_filler == 1
    assert not [e for e in events if e["type"] in ("transcript", "token") and e["utterance"] == 0]
    tone = signal(("s", 0.5), ("v", 0.8), ("s", 1.0))
    events, stats = listen(tiny_model, tone, AssistantOptions(max_new_tokens=4, turn_detection=False))
    assert [(e["reason"], e["transcript"]) for e in events if e["type"] == "discarded"] == [("filler", " ")]
    assert stats.answers == 0 and stats.discarded_filler == 1
    events, stats = listen(tiny_model, tone, tone_opts(max_new_tokens=4, turn_detection=False))
    assert stats.answers == 1 and stats.discarded_filler == 0


@pytest.mark.parametrize("text,expected", [("Um.", True), ("Hmm...", True), ("Uh, um", True), (" ", True),
                                           ("you", True), ("You.", True), ("Okay.", False), ("Huh?", False),
                                           ("What?", False), ("Thank you.", False), ("You know what?", False)])
def test_what_counts_as_a_filler(text, expected):
    assert is_filler(text) is expected


@pytest.mark.parametrize("text,expected", [
    ("Mm-hmm.", True), ("MMHMM", True), ("Hmmm...", True), ("Uh-huh", True), ("Okay, yeah.", True), ("I see.", True),
    (" ", True), ("", True), ("Okay, stop.", False), ("No.", False), ("What time is it?", False), ("Hi.", False),
    ("yeah yeah yeah yeah yeah", False), ("今天天气怎么样？", False), ("¿Qué hora es?", False), ("♪", True),
])
def test_what_counts_as_a_backchannel(text, expected):
    assert is_backchannel(text) is expected


def test_a_backchannel_shorter_than_barge_in_ms_does_not_cancel():
    """A 160 ms "mhm" during the answer is a new (discarded) utterance, not a barge-in."""
    model = SlowModel()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.16), ("s", 1.0))
    events, stats = listen(model, x, tone_opts(barge_in=True, barge_in_ms=300),
                           before_chunk=hold_until_answering(model, 1.9))
    assert stats.cancelled == 0 and not model.streams[0].cancelled
    assert stats.answers == 1 and len(next(e for e in events if e["type"] == "answer")["text"]) == 40
    assert stats.discarded_short == 1  # the "mhm" itself: too short to be a query
    (dropped,) = [e for e in events if e["type"] == "discarded"]
    assert dropped["reason"] == "short" and dropped["voiced_ms"] == 160 and stats.discarded_distant == 0


ANSWER = "The capital of France is Paris, a city of about two million people."


class SpokenStream(FakeStream):
    """An answer of words, streamed a word at a time (until cancelled)."""

    def __iter__(self):
        for word in ANSWER.split(" "):
            if self.cancelled:
                return
            piece = word if not self.text else " " + word
            self.text += piece
            yield piece
            self.started.set()
            time.sleep(0.03)


class SpeakingModel(SlowModel):
    def stream(self, messages, max_new_tokens, cancelled=None):
        s = super().stream(messages, max_new_tokens, cancelled)
        s.__class__ = SpokenStream
        return s


def play_from(assistant_of, at_s: float, until_s: float | None = None, hold=None):
    """A `before_chunk` hook: the app's loudspeaker plays from stream position `at_s` (to `until_s`)."""
    def hook(audio_s):
        if hold is not None:
            hold(audio_s)
        if audio_s == pytest.approx(at_s):
            assistant_of().playback(True)
        if until_s is not None and audio_s == pytest.approx(until_s):
            assistant_of().playback(False)
    return hook


def listen_with_playback(model, x, opts, at_s, until_s=None, hold=None):
    events = []
    a = Assistant(model, opts, EndpointOptions(), emit=events.append, vad=EnergyVad())
    stats = a.run(chunks_of(x, play_from(lambda: a, at_s, until_s, hold)))
    return events, stats


ECHO_HEARD = "the capital of France is Paris, the city of about 2 million people"  # as an ASR might hear it


def test_the_echo_of_an_answer_played_aloud_is_not_answered():
    """The app plays the first answer from 1.5 s; speech heard meanwhile that reads it back is its
    echo: discarded (naming the answer it echoes), not answered."""
    model = SpeakingModel(transcripts=["hello", ECHO_HEARD])
    events, stats = listen_with_playback(model, BARGE_IN, tone_opts(barge_in=False), at_s=1.5)
    (echo,) = [e for e in events if e["type"] == "discarded"]
    assert echo["reason"] == "echo" and echo["echo_of"] == 0 and echo["utterance"] == 1
    assert echo["transcript"] == ECHO_HEARD
    assert [e["utterance"] for e in events if e["type"] == "answer"] == [0] and stats.echoes == 1


@pytest.mark.parametrize("case", ["no playback", "playback over before", "guard off", "a new request"])
def test_what_is_not_taken_for_an_echo(case):
    """Only speech heard during playback (or its tail) is checked, and only a read-back is an echo."""
    heard = "What is the capital of Spain?" if case == "a new request" else ECHO_HEARD
    model = SpeakingModel(transcripts=["hello", heard])
    opts = tone_opts(barge_in=False, echo_guard=case != "guard off", echo_tail_ms=300)
    at_s, until_s = (1.5, 1.56) if case == "playback over before" else (1.5, None)  # its tail ends at 1.86 s
    if case == "no playback":
        events, stats = listen(model, BARGE_IN, opts)
    else:
        events, stats = listen_with_playback(model, BARGE_IN, opts, at_s, until_s)
    assert [e["utterance"] for e in events if e["type"] == "answer"] == [0, 1] and stats.echoes == 0


def test_an_answer_stopped_by_its_own_echo_goes_on():
    """With barge-in, the echo of the answer being played stops it; once heard as an echo, the
    answer goes on where it stopped."""
    model = SpeakingModel(transcripts=["hello", "the capital of France is Paris"])

    def hold(audio_s):  # the echo begins once six words have been streamed (and played)
        if audio_s == pytest.approx(1.9):
            deadline = time.monotonic() + 5
            while not (model.streams and len(model.streams[0].text.split()) >= 6) and time.monotonic() < deadline:
                time.sleep(0.005)

    events, stats = listen_with_playback(model, BARGE_IN, tone_opts(barge_in=True), at_s=1.5, hold=hold)
    kinds = [(e["type"], e["utterance"]) for e in events if e["type"] not in ("token", "speech_start", "speech_end")]
    assert kinds == [("transcript", 0), ("cancelled", 0), ("discarded", 1), ("resumed", 0), ("answer", 0)]
    assert next(e for e in events if e["type"] == "discarded")["reason"] == "echo"
    assert next(e for e in events if e["type"] == "answer")["text"] == ANSWER
    assert (stats.cancelled, stats.resumed, stats.echoes, stats.backchannels) == (1, 1, 1, 0)


def test_half_duplex_hears_nothing_while_the_loudspeaker_plays():
    """Speech from 1.9 to 2.5 s falls in playback (1.5-2.0 s) and its 600 ms tail: not heard at
    all; the speech at 3.5 s is."""
    model = SlowModel()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.6), ("s", 1.0), ("v", 0.6), ("s", 1.0))
    opts = tone_opts(barge_in=False, half_duplex=True, echo_tail_ms=600)
    events, stats = listen_with_playback(model, x, opts, at_s=1.5, until_s=2.0)
    starts = [e["audio_s"] for e in events if e["type"] == "speech_start"]
    assert starts == pytest.approx([0.5, 3.5], abs=0.05) and stats.answers == 2


@pytest.mark.parametrize("heard, answer, expected", [
    ("The capital of France is Paris.", "The capital of France is Paris.", True),
    ("There were seven days in a week.", "There were 7 days in a week.", True),  # numbers either way
    ("the color of the rainbow is a magic phenomenon", "The color of the rainbow is a magical phenomenon.", True),
    ("The capital of France is, are you sure?", "The capital of France is Paris.", False),  # quoting it back
    ("Did you say the lights in the kitchen?", "The lights in the kitchen are on.", False),
    ("What is the capital of Spain?", "The capital of France is Paris.", False),
    ("Paris.", "The capital of France is Paris.", False),  # too few words to tell
    ("the is of a", "The capital of France is a city.", False),  # shared words, no run of them
])
def test_what_counts_as_an_echo(heard, answer, expected):
    assert is_echo(heard, answer) is expected
    assert echo_share("", answer) == 0.0


def test_without_barge_in_every_answer_completes():
    model = SlowModel()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.6), ("s", 1.0))
    events, stats = listen(model, x, tone_opts(barge_in=False))
    assert stats.cancelled == 0 and stats.answers == 2
    assert all(len(e["text"]) == 40 for e in events if e["type"] == "answer")


def hold_until_answered(model, at_s: float):
    """A `before_chunk` hook: at stream position `at_s`, wait until the first answer has streamed."""
    def hook(audio_s):
        if audio_s == pytest.approx(at_s):
            deadline = time.monotonic() + 5
            while not (model.streams and len(model.streams[0].text) == 40) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.2)  # the stream's last pause (10 ms), then the worker reports the answer
    return hook


@pytest.mark.parametrize("when", ["over the answer", "after the answer", "over the playback", "no words over it"])
def test_without_barge_in_a_backchannel_over_an_answer_is_not_answered(when):
    """Barge-in off: "mhm" said while the answer streams (or while the app plays it) kept the
    speaker going and asks nothing; the answer is not stopped. Said after the answer, "okay" or
    "yes" may answer a question the assistant asked, so it is answered. An utterance of no words
    is a filler, answered here (the loop tests answer fillers) wherever it falls."""
    model = SlowModel(transcripts=["hello", " " if when == "no words over it" else "Mm-hmm."])
    opts = tone_opts(barge_in=False)
    if when == "over the playback":  # the answer has streamed; the app still plays it
        events, stats = listen_with_playback(model, BARGE_IN, opts, at_s=1.5, hold=hold_until_answered(model, 1.9))
    else:
        hold = (hold_until_answered if when == "after the answer" else hold_until_answering)(model, 1.9)
        events, stats = listen(model, BARGE_IN, opts, before_chunk=hold)
    answers = [e for e in events if e["type"] == "answer"]
    assert answers[0]["utterance"] == 0 and answers[0]["text"] == "x" * 40 and stats.cancelled == 0
    if when in ("after the answer", "no words over it"):
        assert [a["utterance"] for a in answers] == [0, 1] and stats.backchannels == 0
    else:
        (back,) = [e for e in events if e["type"] == "discarded"]
        assert (back["utterance"], back["reason"], back["transcript"]) == (1, "backchannel", "Mm-hmm.")
        assert len(answers) == 1 and stats.backchannels == 1 and model.streams[1].cancelled


def test_in_a_recording_a_backchannel_over_an_answer_is_answered():
    """A recording's talker never heard the answers (`talker_hears_answers=False`: listen's files and
    stdin): "Okay." said while an answer streams is a request like any other, so whether it is
    answered does not depend on how fast the machine answered the one before."""
    model = SlowModel(transcripts=["hello", "Okay."])
    events, stats = listen(model, BARGE_IN, tone_opts(barge_in=False, talker_hears_answers=False),
                           before_chunk=hold_until_answering(model, 1.9))
    answers = [e for e in events if e["type"] == "answer"]
    assert [a["utterance"] for a in answers] == [0, 1] and stats.backchannels == 0
    assert not [e for e in events if e["type"] == "discarded"]

def test_abort_stops_the_answer_in_progress_and_drops_the_rest():
    """What `serve` does when its client disconnects: the answer streaming stops, and a request
    that ends later is never answered; `run` still returns."""
    model = SlowModel()
    x = signal(("s", 0.5), ("v", 0.6), ("s", 0.8), ("v", 0.6), ("s", 1.0))
    events = []
    a = Assistant(model, tone_opts(barge_in=False, turn_detection=False), emit=events.append, vad=EnergyVad())
    hold = hold_until_answering(model, 1.9)

    def abort_while_answering(audio_s):
        hold(audio_s)
        if audio_s == pytest.approx(1.9):
            a.abort()

    stats = a.run(chunks_of(x, abort_while_answering))
    assert stats.cancelled == 1 and model.streams[0].cancelled and stats.answers == 0
    assert len(model.streams) == 1 and stats.utterances == 2  # the second request: heard, never answered
    assert not [e for e in events if e["type"] == "answer"]


def test_background_speech_far_under_the_talker_is_dropped_not_answered():
    """A quiet background talker (26 dB under, with short pauses) around two requests: each request
    is answered once, and the background left after them is a `discarded` event, not a request."""
    x = signal(("s", 2.0), ("v", 1.0), ("s", 1.5), ("v", 1.0), ("s", 1.5))
    t = np.arange(len(x)) / 16000
    x = (x + 0.3 * 10 ** (-26 / 20) * ((t % 0.6) < 0.4) * np.sin(2 * np.pi * 90 * t)).astype(np.float32)
    events = []
    a = Assistant(InstantModel(), tone_opts(barge_in=False, turn_detection=False), emit=events.append,
                  vad=EnergyVad(threshold=0.005))
    stats = a.run(chunks_of(x))
    assert stats.answers == 2 and stats.discarded_distant == 1 and stats.discarded_short == 0
    (dropped,) = [e for e in events if e["type"] == "discarded"]
    assert dropped["reason"] == "distant" and dropped["utterance"] == 2


def test_one_failing_utterance_does_not_stop_the_loop():
    model = SlowModel(fail_first=True)
    x = signal(("s", 0.5), ("v", 0.6), ("s", 1.0), ("v", 0.6), ("s", 1.0))
    events, stats = listen(model, x, tone_opts(speculative=False, barge_in=False))
    errors = [e for e in events if e["type"] == "error"]
    assert stats.errors == 1 and errors[0]["utterance"] == 0 and "corrupt utterance" in errors[0]["message"]
    assert stats.answers == 1 and next(e for e in events if e["type"] == "answer")["utterance"] == 1


class HeldModel(SlowModel):
    """Its first answer waits for `release`, so later requests pile up behind it."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def stream(self, messages, max_new_tokens, cancelled=None):
        s = super().stream(messages, max_new_tokens, cancelled)
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(10)
        return s


@pytest.mark.parametrize("max_waiting", [0, 1, 2])
def test_past_max_waiting_the_oldest_waiting_request_is_skipped(max_waiting):
    """Four requests; three end while the first answer is held. Only `max_waiting` of them wait."""
    model = HeldModel()
    x = signal(("s", 0.5), *[("v", 0.6), ("s", 1.0)] * 4)

    def fed():  # once the model holds the first request, feed the rest, then let it go
        for c in chunks_of(x, lambda t: t == pytest.approx(2.0) and model.entered.wait(10)):
            yield c
        model.release.set()

    events = []
    a = Assistant(model, tone_opts(max_new_tokens=6, turn_detection=False, speculative=False,
                                          barge_in=False, max_waiting=max_waiting),
                  emit=events.append, vad=EnergyVad())
    stats = a.run(fed())
    skipped = [e["utterance"] for e in events if e["type"] == "skipped"]
    answered = [e["utterance"] for e in events if e["type"] == "answer"]
    expected_skips = [] if max_waiting == 0 else [1, 2][: 3 - max_waiting]
    assert skipped == expected_skips and stats.skipped == len(expected_skips)
    assert answered == [u for u in range(4) if u not in expected_skips]  # the newest ones, in order
    assert stats.utterances == 4 and model.calls == len(answered) and not a._waiting


class InstantModel:
    """Answers immediately: lets a long session run quickly."""

    class config:
        audio_locator = "<|AUDIO|>"

    def stream(self, messages, max_new_tokens, cancelled=None):
        return _OneShot()


class _OneShot(FakeStream):
    def __iter__(self):
        self.text = "ok"
        yield "ok"


def test_long_session_keeps_state_bounded():
    """200 utterances (about 4 minutes of audio): counters grow, buffers do not."""
    one = signal(("v", 0.5), ("s", 0.7))
    x = np.tile(one, 200)
    events = []
    a = Assistant(InstantModel(), tone_opts(barge_in=False), emit=events.append, vad=EnergyVad())
    stats = a.run(chunks_of(x))
    assert stats.answers == 200 and stats.errors == 0
    assert len(a._walls) <= a._walls.maxlen and a._jobs.empty() and a._spec is None
    ep = a.endpointer
    assert ep._frames == [] and len(ep._history) <= ep._history.maxlen


class StubTurn:
    """An end-of-turn detector with a fixed verdict; records what it was asked (optionally slowly)."""

    def __init__(self, p: float, delay_s: float = 0.0) -> None:
        self.p, self.delay_s, self.asked = p, delay_s, []

    def probability(self, text: str) -> float:
        time.sleep(self.delay_s)
        self.asked.append(text)
        return self.p


PAUSED = (("s", 0.5), ("v", 0.8), ("s", 0.3), ("v", 0.8), ("s", 1.0))  # a 300 ms pause inside


@pytest.mark.parametrize("delay_s", [0.0, 0.05])
def test_a_finished_request_ends_at_turn_end_ms(tiny_model, delay_s):
    """A verdict of 'finished' ends the utterance after 200 ms of silence, not 500, even when the
    verdict comes later than the audio: the decision is made at that frame, from the samples seen."""
    turn = StubTurn(1.0, delay_s)
    answered = threading.Event()
    opts = tone_opts(max_new_tokens=4, barge_in=False, wait_for_turn_verdict=True)

    def second_after_first_answer(audio_s):  # the worker is free when the second request comes
        if audio_s == pytest.approx(1.6):
            assert answered.wait(10)

    events = []

    def emit(e):
        events.append(e)
        if e["type"] == "answer":
            answered.set()

    a = Assistant(tiny_model, opts, EndpointOptions(), emit=emit, vad=EnergyVad(), turn_detector=turn)
    stats = a.run(chunks_of(signal(*PAUSED), second_after_first_answer))
    ends = [e for e in events if e["type"] == "speech_end"]
    assert [e["reason"] for e in ends] == ["turn_complete", "turn_complete"]
    assert [e["audio_s"] for e in ends] == [1.5, 2.6] and [e["speech_end_s"] for e in ends] == [1.3, 2.4]
    assert all(e["turn_probability"] == 1.0 for e in ends)
    assert stats.turn_ends == 2 and stats.answers == 2 and stats.speculative_used == 2
    transcripts = [e["text"] for e in events if e["type"] == "transcript"]
    assert turn.asked == transcripts  # the detector judged the speculative transcripts
    assert all("turn_check" in e["timings_ms"] for e in events if e["type"] == "answer")


def test_an_unfinished_request_waits_for_the_hangover(tiny_model):
    events, stats = listen(tiny_model, signal(*PAUSED), tone_opts(max_new_tokens=4, barge_in=False, wait_for_turn_verdict=True), turn=StubTurn(0.0))
    ends = [e for e in events if e["type"] == "speech_end"]
    hangover_s = EndpointOptions().hangover_ms / 1000
    assert [(e["reason"], e["audio_s"]) for e in ends] == [("silence", 2.4 + hangover_s)]
    assert stats.turn_ends == 0 and stats.answers == 1 and stats.speculative_discarded == 1


def test_turn_detection_is_off_when_turn_end_equals_the_hangover(tiny_model):
    turn = StubTurn(1.0)
    events, stats = listen(tiny_model, signal(*PAUSED), tone_opts(max_new_tokens=4, barge_in=False, wait_for_turn_verdict=True), turn=turn,
                           endpoint=EndpointOptions(turn_end_ms=EndpointOptions().hangover_ms))
    assert stats.answers == 1 and stats.turn_ends == 0 and turn.asked == []


def test_turn_detector_on_the_tiny_model_matches_a_plain_forward(tiny_model):
    """The cached-prefix scoring call gives the probability a whole forward pass gives."""
    import torch

    from desta_edge.runtime.turn import TurnDetector, TurnOptions

    turn = TurnDetector(tiny_model, TurnOptions(system="Be brief."))
    tok, llm = tiny_model.tokenizer, tiny_model.backend.llm_model
    for text in ("what is the time", "hello there!"):
        p = turn.probability(text)
        ids = torch.tensor([tok.encode(turn._head + text.rstrip("!"), add_special_tokens=False)])
        with torch.inference_mode():
            probs = torch.softmax(llm(input_ids=ids).logits[0, -1].float(), -1)
        assert p == pytest.approx(float(probs[turn._end_ids].sum()), abs=1e-5) and 0.0 < p < 1.0
    assert turn.probability("  ...") == 0.0


def test_a_failing_speculative_job_does_not_hang_the_turn_check():
    """The endpointer waits for the verdict of the job it judges; a job that fails must release it."""
    model = SlowModel(fail_first=True)
    done = []
    t = threading.Thread(target=lambda: done.append(listen(
        model, signal(("s", 0.5), ("v", 0.6), ("s", 1.0), ("v", 0.6), ("s", 1.0)),
        tone_opts(barge_in=False, wait_for_turn_verdict=True), turn=StubTurn(1.0))), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the loop hung waiting for a verdict"
    events, stats = done[0]
    assert stats.errors == 1 and stats.answers == 1
    assert [e["reason"] for e in events if e["type"] == "speech_end"] == ["silence", "turn_complete"]


def test_discarded_speculation_stops_before_the_transcript(tiny_model):
    """Speech resumes while the speculative job is in the encoder: it stops there, no ASR, no LLM."""
    backend = tiny_model.backend
    encode, transcribe = backend.encode, backend.transcribe
    entered, resumed, stages = threading.Event(), threading.Event(), []

    def held_encode(*a, **k):
        stages.append(("encode", resumed.is_set()))
        entered.set()
        if not resumed.is_set():  # the first (speculative) job: hold it until speech has resumed
            assert resumed.wait(10)
        return encode(*a, **k)

    def feed(audio_s):
        if audio_s == pytest.approx(1.5):  # the pause at 1.46 s started the job: let it reach the encoder
            assert entered.wait(10)
        if audio_s == pytest.approx(1.7):  # speech came back at 1.6 s
            resumed.set()

    backend.encode = held_encode
    backend.transcribe = lambda *a, **k: stages.append(("transcribe", None)) or transcribe(*a, **k)
    try:
        # webrtcvad must hear speech in both clips, or ASR is skipped anyway (a pure tone is not speech)
        quiet = lambda d: np.zeros(int(d * 16000), dtype=np.float32)  # noqa: E731
        x = np.concatenate([quiet(0.5), speechlike(0.8, 1), quiet(0.3), speechlike(0.8, 2), quiet(1.0)])
        events, stats = listen(tiny_model, x, before_chunk=feed)
    finally:
        del backend.encode, backend.transcribe
    assert stats.speculative_discarded == 1 and stats.answers == 1 and stats.errors == 0
    # the held job stopped after its encoder; only the answered job transcribed
    assert stages == [("encode", False), ("encode", True), ("transcribe", None)]


def test_assistant_options_are_checked():
    with pytest.raises(ValueError, match="barge_in_ms"):
        AssistantOptions(barge_in_ms=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tone_opts(max_new_tokens=0)
    with pytest.raises(ValueError, match="max_waiting"):
        tone_opts(max_waiting=-1)


def test_warm_up_uses_the_assistants_prompt_and_the_turn_check(tiny_model):
    """Assistant.warm_up runs the model with the prompt real requests get, and the end-of-turn check."""
    asked, judged = [], []

    class Turn:
        def probability(self, transcript: str) -> float:
            judged.append(transcript)
            return 0.0

    class Recorder:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def warm_up(self, conversation):
            asked.append(conversation(np.zeros(160, dtype=np.float32)))
            return self.model.warm_up(conversation)

    opts = tone_opts(system="Be brief.", prompt="Answer it.", max_new_tokens=4)
    a = Assistant(Recorder(tiny_model), opts, EndpointOptions(), vad=EnergyVad(), turn_detector=Turn())
    assert a.warm_up() > 0
    (messages,) = asked
    assert messages[0] == {"role": "system", "content": "Be brief."} and messages[1]["content"].endswith("Answer it.")
    assert judged == [WARM_UP_TRANSCRIPT]


def test_the_speech_check_never_rejects_what_the_endpointer_hears(monkeypatch):
    """An utterance Silero called speech at the endpointer's threshold must not get the no-speech
    transcript from the model's check at a stricter one (a quiet, reverberant question was dropped
    as a filler that way): the check follows a lower endpointer threshold and a higher gain for quiet
    audio, never the other way."""
    from conftest import build_tiny_model
    from desta_edge.runtime.silero import SPEECH_GAIN_DB, SPEECH_THRESHOLD

    model = build_tiny_model()
    assert model.speech_threshold == SPEECH_THRESHOLD == EndpointOptions().silero_threshold
    stricter = EndpointOptions(silero_threshold=0.6)
    for endpoint in (stricter, EndpointOptions(detector="webrtcvad", silero_threshold=0.3)):
        Assistant(model, tone_opts(turn_detection=False), endpoint, vad=EnergyVad())
        assert model.speech_threshold == SPEECH_THRESHOLD, endpoint
    assert model.speech_gain_db == SPEECH_GAIN_DB == EndpointOptions().silero_gain_db
    Assistant(model, tone_opts(turn_detection=False), EndpointOptions(silero_gain_db=0), vad=EnergyVad())
    assert model.speech_gain_db == SPEECH_GAIN_DB  # the gain only adds speech: off is the stricter check
    Assistant(model, tone_opts(turn_detection=False), EndpointOptions(silero_threshold=0.3, silero_gain_db=40),
              vad=EnergyVad())
    assert model.speech_threshold == 0.3 and model.speech_gain_db == 40
    asked = []
    monkeypatch.setattr("desta_edge.runtime.model.has_speech",
                        lambda x, threshold, gain_db: asked.append((threshold, gain_db)) or True)
    clip = {"audio": (speechlike(), 16000), "text": None}
    model.generate([{"role": "user", "content": "<|AUDIO|>", "audios": [clip]}], max_new_tokens=1)
    assert asked == [(0.3, 40)]

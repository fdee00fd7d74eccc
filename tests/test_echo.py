"""streaming/echo.py: the loudspeaker's echo cancelled from the microphone (WebRTC's AEC3 from
livekit for the endpointer, Speex's canceller for the model), and the sources whose input carries
the loudspeaker's signal as a reference channel."""

import ctypes.util
import io
import logging

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import ESPEAK, speak
from desta_edge.runtime.audio import AudioError, speech_ms
from desta_edge.streaming import echo as echo_module
from desta_edge.streaming.echo import FRAME, DuplexCanceller, EchoCanceller, SpeexCanceller
from desta_edge.streaming.sources import file_source, pcm_source
from desta_edge.training import acoustics

pytest.importorskip("livekit")
R = 16000


class Recorder:
    """An APM that leaves the microphone as it is and records what it was given."""

    def __init__(self):
        self.delay_ms, self.far, self.near = None, [], []

    def set_stream_delay_ms(self, ms):
        self.delay_ms = ms

    def process_reverse_stream(self, frame):
        self.far.append(frame.samples_per_channel)

    def process_stream(self, frame):
        self.near.append(frame.samples_per_channel)


def test_the_canceller_hands_back_whole_frames_and_the_rest_at_the_end():
    apm = Recorder()
    aec = EchoCanceller(delay_ms=30, apm=apm)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 1000).astype(np.float32)
    outs = [aec(x[a:b], -x[a:b]) for a, b in ((0, 250), (250, 700), (700, 1000))]
    assert [len(o) for o in outs] == [160, 480, 320] and len(aec.flush()) == 40 and len(aec.flush()) == 0
    assert apm.delay_ms == 30 and apm.far == apm.near == [FRAME] * 7  # the last 40 samples padded to a frame
    assert np.abs(np.concatenate(outs) - x[:960]).max() <= 1 / 32768  # untouched but for 16-bit rounding


def test_mismatched_pieces_and_a_negative_delay_are_refused():
    with pytest.raises(ValueError, match="equal pieces"):
        EchoCanceller(apm=Recorder())(np.zeros(160), np.zeros(320))
    with pytest.raises(ValueError, match="delay_ms must be >= 0"):
        EchoCanceller(delay_ms=-1, apm=Recorder())


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12))


def said_by(tmp, text, voice):
    x, sr = sf.read(speak(text, tmp / f"{voice}.wav", voice=voice), dtype="float32")
    return soxr.resample(x, sr, R).astype(np.float32)


def loudspeaker_echo(answer: np.ndarray, rng) -> np.ndarray:
    """`answer` through a small loudspeaker (band-limited, softly clipped) and a room, at -30 dBFS."""
    echo = acoustics.band_limit(answer, 200.0, 7000.0)
    echo = acoustics.convolve(np.tanh(1.5 * echo / np.abs(echo).max()), acoustics.room_response(0.4, 4.0, rng))
    return acoustics.set_level(echo, -30)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """What a loudspeaker plays (a spoken answer), its echo at the microphone 40 ms later through a
    small loudspeaker and a room, and a person's question after it: (mic, reference, echo span,
    question span) at 16 kHz."""
    if ESPEAK is None:
        pytest.skip("needs espeak-ng")
    tmp = tmp_path_factory.mktemp("echo")
    rng = np.random.default_rng(1)
    answer = said_by(tmp, "The capital of France is Paris, a city on the river Seine.", "en-us")
    answer = acoustics.set_level(answer, -20)
    question = acoustics.set_level(said_by(tmp, "What is the capital of Germany?", "en-gb+m3"), -26)
    echo = loudspeaker_echo(answer, rng)
    delay, gap = int(0.04 * R), int(0.5 * R)
    n = len(answer) + delay + gap + len(question) + gap
    ref, mic = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref[: len(answer)] = answer
    mic[delay : delay + len(echo)] += echo
    q0 = len(answer) + delay + gap
    mic[q0 : q0 + len(question)] += question
    mic += 10 ** (-65 / 20) * acoustics.room_tone(n, rng)
    return mic, ref, (R, len(answer)), (q0, q0 + len(question))


def test_aec3_removes_the_echo_and_keeps_the_person(room):
    """After a second to learn the room, the echo is 15 dB or more down (23 dB when measured); the
    question asked after the loudspeaker stopped keeps its level within 3 dB."""
    mic, ref, (e0, e1), (q0, q1) = room
    aec = EchoCanceller()
    out = np.concatenate([aec(mic[i : i + 320], ref[i : i + 320]) for i in range(0, len(mic), 320)] + [aec.flush()])
    assert len(out) == len(mic)
    assert db(out[e0:e1]) < db(mic[e0:e1]) - 15
    assert abs(db(out[q0:q1]) - db(mic[q0:q1])) < 3


def test_a_source_cancels_its_reference_channel_from_the_others(room, tmp_path):
    """A 3-channel 48 kHz file (microphone, loudspeaker, microphone) and the same as stdin PCM: with
    the reference channel named, the chunks are the microphone with its echo gone; without, all
    three channels averaged."""
    mic, ref, (e0, e1), _ = room
    x = soxr.resample(np.stack([mic, ref, mic], axis=1), R, 48000).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, x, 48000, subtype="PCM_16")

    def heard(chunks):
        chunks = list(chunks)
        assert [c.audio_s for c in chunks] == pytest.approx([i * 0.02 for i in range(len(chunks))])
        return np.concatenate([c.samples for c in chunks])

    plain, cancelled = heard(file_source(path)), heard(file_source(path, reference_channel=1))
    assert len(cancelled) == len(plain) == pytest.approx(len(mic), abs=2)
    assert db(cancelled[e0:e1]) < db(mic[e0:e1]) - 15
    assert np.allclose(plain, soxr.resample(x.mean(axis=1), 48000, R), atol=1e-3)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    stdin = heard(pcm_source(io.BytesIO(pcm), rate=48000, channels=3, reference_channel=-2))
    assert db(stdin[e0:e1]) < db(mic[e0:e1]) - 15


def test_a_reference_channel_needs_another_channel_for_the_microphone(tmp_path):
    mono = tmp_path / "mono.wav"
    sf.write(mono, np.zeros(1600, np.float32), R)
    with pytest.raises(AudioError, match="reference channel 0 must be one of its 1 channels"):
        file_source(mono, reference_channel=0)
    with pytest.raises(AudioError, match="reference channel 2 must be one of its 2 channels"):
        pcm_source(io.BytesIO(b""), channels=2, reference_channel=2)


@pytest.fixture(scope="module")
def double_talk(tmp_path_factory):
    """A question asked 2 s into a spoken answer, over its echo: (mic, reference, question, where
    it starts) at 16 kHz."""
    if ESPEAK is None:
        pytest.skip("needs espeak-ng")
    tmp = tmp_path_factory.mktemp("double_talk")
    rng = np.random.default_rng(2)
    answer = said_by(tmp, "The capital of France is Paris, a city on the river Seine. It has many museums and parks.",
                     "en-us")
    answer = acoustics.set_level(answer, -20)
    question = acoustics.set_level(said_by(tmp, "What is the capital of Germany?", "en-gb+m3"), -26)
    n, delay, q0 = len(answer) + R, int(0.04 * R), 2 * R
    ref, mic = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref[: len(answer)] = answer
    mic[delay : delay + len(answer)] += loudspeaker_echo(answer, rng)
    mic[q0 : q0 + len(question)] += question
    mic += 10 ** (-65 / 20) * acoustics.room_tone(n, rng)
    return mic, ref, question, q0


def question_sdr(out: np.ndarray, question: np.ndarray, at: int) -> float:
    """How clearly `out` carries `question` from sample `at` (dB): its best-scaled copy against
    everything else, at the lag that fits best within 15 ms (the cancellers buffer a frame)."""
    q = question.astype(np.float64)

    def sdr(lag):
        o = out[at + lag : at + lag + len(q)].astype(np.float64)
        fit = (o @ q) / (q @ q) * q
        return 10 * np.log10((fit @ fit) / ((o - fit) @ (o - fit)))

    return max(sdr(lag) for lag in range(0, 241, 8))


def cancelled(canceller, mic, ref) -> np.ndarray:
    return np.concatenate([canceller(mic[i : i + 320], ref[i : i + 320]) for i in range(0, len(mic), 320)]
                          + [canceller.flush()])


def test_speex_keeps_a_question_asked_over_the_loudspeaker_that_aec3_garbles(double_talk):
    """Why the model hears Speex's output: over the echo, the question stands about 10 dB above the
    rest there (3 dB in the microphone), where AEC3's suppressor leaves it under (-4 dB when
    measured). Both take the echo down before the question; AEC3 further."""
    mic, ref, question, q0 = double_talk
    speex, aec3 = cancelled(SpeexCanceller(), mic, ref), cancelled(EchoCanceller(), mic, ref)
    assert len(speex) == len(aec3) == len(mic)
    raw = question_sdr(mic, question, q0)
    assert question_sdr(speex, question, q0) > max(raw + 4, 6)
    assert question_sdr(aec3, question, q0) < question_sdr(speex, question, q0) - 8
    echo_only = slice(R, q0)
    assert db(speex[echo_only]) < db(mic[echo_only]) - 6 and db(aec3[echo_only]) < db(speex[echo_only])


def test_the_endpointer_hears_a_question_over_the_loudspeaker_that_aec3_takes_out(double_talk):
    """DuplexCanceller: the model gets Speex's output; the endpointer gets AEC3's, but Speex's where
    the person is louder than the echo, once the loudspeaker has played long enough for Speex to
    learn the room. Silero finds the question there nearly as in Speex's output (1,504 of its 1,728
    ms when measured, AEC3's output: 384 ms), and the echo alone before it stays as far down as AEC3
    takes it, with no speech for Silero (Speex's output alone: 800 ms)."""
    mic, ref, question, q0 = double_talk
    duplex = DuplexCanceller()
    outs = [duplex(mic[i : i + 320], ref[i : i + 320]) for i in range(0, len(mic), 320)] + [duplex.flush()]
    heard, for_model = (np.concatenate(c) for c in zip(*outs))
    assert len(heard) == len(for_model) == len(mic)
    assert np.allclose(for_model, cancelled(SpeexCanceller(), mic, ref), atol=1e-6)
    aec3 = cancelled(EchoCanceller(), mic, ref)
    assert np.array_equal(heard[:R], aec3[:R])  # the first second of playback: Speex still learning the room
    asked, alone = slice(q0, q0 + len(question)), speech_ms(question)
    assert speech_ms(aec3[asked]) < 0.5 * alone
    assert speech_ms(heard[asked]) >= 0.8 * alone
    echo_only = slice(R, q0)
    assert speech_ms(heard[echo_only]) == 0 < speech_ms(for_model[echo_only])
    assert db(heard[echo_only]) < db(aec3[echo_only]) + 1


def test_speex_frames_like_aec3_and_refuses_a_bad_tail():
    aec = SpeexCanceller()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 1000).astype(np.float32)
    outs = [aec(x[a:b], np.zeros(b - a, np.float32)) for a, b in ((0, 250), (250, 700), (700, 1000))]
    assert [len(o) for o in outs] == [160, 480, 320] and len(aec.flush()) == 40
    assert aec.frame_energies is None  # kept only for a DuplexCanceller, which drains it: nothing grows
    with pytest.raises(ValueError, match="tail_ms must be > 0"):
        SpeexCanceller(tail_ms=0)


def test_without_libspeexdsp_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(RuntimeError, match="apt install libspeexdsp1"):
        SpeexCanceller()


def test_a_source_gives_the_model_speex_output_and_the_endpointer_duplex_output(double_talk, tmp_path,
                                                                                monkeypatch, caplog):
    """With a reference channel, each chunk carries DuplexCanceller's two copies of the same span:
    the endpointer's (`samples`) and Speex's (`model_samples`); without libspeexdsp, only AEC3's
    output, and a warning says so."""
    mic, ref, question, q0 = double_talk
    path = tmp_path / "two.wav"
    sf.write(path, np.stack([mic, ref], axis=1), R, subtype="FLOAT")
    chunks = list(file_source(path, reference_channel=1))
    assert all(c.model_samples is not None and len(c.model_samples) == len(c.samples) for c in chunks)
    heard = np.concatenate([c.samples for c in chunks])
    for_model = np.concatenate([c.model_samples for c in chunks])
    duplex = DuplexCanceller()
    assert np.allclose(heard, np.concatenate([duplex(mic, ref)[0], duplex.flush()[0]]), atol=1e-6)
    assert np.allclose(for_model, cancelled(SpeexCanceller(), mic, ref), atol=1e-6)

    def missing(*args, **kwargs):
        raise RuntimeError("Speex echo cancellation needs libspeexdsp: apt install libspeexdsp1")

    monkeypatch.setattr(echo_module, "SpeexCanceller", missing)
    with caplog.at_level(logging.WARNING):
        chunks = list(file_source(path, reference_channel=1))
    assert all(c.model_samples is None for c in chunks) and "garbles speech over the loudspeaker" in caplog.text
    assert np.allclose(np.concatenate([c.samples for c in chunks]), cancelled(EchoCanceller(), mic, ref), atol=1e-6)

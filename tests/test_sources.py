"""Audio sources: files at other rates/channels, stdin PCM, pacing, and a simulated microphone."""

import io

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from desta_edge.runtime.audio import AudioError
from desta_edge.streaming.sources import CHUNK_MS, MicOptions, MicSource, RingBuffer, file_source, paced, pcm_source


def collect(chunks):
    chunks = list(chunks)
    for a, b in zip(chunks, chunks[1:]):  # contiguous positions
        assert b.audio_s == pytest.approx(a.audio_s + len(a.samples) / 16000)
    return chunks, np.concatenate([c.samples for c in chunks])


def test_file_source_resamples_and_downmixes_without_a_length_limit(tmp_path):
    rate = 44100
    x = tone(40.0, rate=rate, freq=500.0)  # longer than the model's 30 s window: fine for streaming
    path = tmp_path / "long.wav"
    sf.write(str(path), np.stack([x, x], axis=1), rate)
    chunks, y = collect(file_source(path))
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    assert abs(len(y) - 40 * 16000) <= 16
    assert {len(c.samples) for c in chunks[:-1]} == {16000 * CHUNK_MS // 1000}
    spec = np.abs(np.fft.rfft(y[16000:32000]))
    assert abs(np.argmax(spec) - 500) <= 1  # 1 Hz bins over one second


def test_file_source_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        file_source(tmp_path / "none.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot decode"):
        file_source(bad)
    whole = tmp_path / "whole.wav"
    sf.write(str(whole), np.zeros(16000, np.float32), 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:20000])
    with pytest.raises(AudioError, match=r"cut short: its header announces 32000 bytes of samples, it holds 19956"):
        file_source(cut)


def test_nan_samples_in_a_stream_become_silence_and_are_counted(tmp_path, caplog):
    x = tone(0.5)
    x[100:110] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), x, 16000, subtype="FLOAT")
    _, y = collect(file_source(path))
    assert np.isfinite(y).all() and (y[100:110] == 0).all()
    assert "10 non-finite samples" in caplog.text


def test_pcm_source_reads_s16le_at_any_rate_and_channel_count():
    x = tone(1.0, rate=8000, freq=300.0)
    pcm = (np.stack([x, x], axis=1) * 32767).astype("<i2").tobytes() + b"\x01"  # a stray byte at the end
    _, y = collect(pcm_source(io.BytesIO(pcm), rate=8000, channels=2, block_bytes=1000))
    assert abs(len(y) - 16000) <= 8
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) - 300) <= 1
    with pytest.raises(AudioError, match="stdin: unsupported sample rate 2000 Hz"):
        collect(pcm_source(io.BytesIO(pcm), rate=2000, channels=2))


def test_paced_releases_chunks_at_real_time():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    chunks = list(file_source_like(2.0))
    out = list(paced(iter(chunks), clock=lambda: now[0], sleep=sleep))
    assert len(out) == len(chunks)
    assert now[0] == pytest.approx(2.0)  # the last chunk is released when its audio has "played"


def file_source_like(seconds):
    from desta_edge.streaming.sources import Chunk

    n = 320
    for i in range(int(seconds * 16000) // n):
        yield Chunk(np.zeros(n, np.float32), i * n / 16000)


def test_ring_buffer_never_blocks_and_counts_overflow():
    rb = RingBuffer(1000)
    rb.write(np.arange(600, dtype=np.float32))
    rb.write(np.arange(600, 1200, dtype=np.float32))  # 200 too many: the oldest go
    assert rb.dropped == 200
    got = rb.read(1000)
    np.testing.assert_array_equal(got, np.arange(200, 1200, dtype=np.float32))
    assert rb.read(1) is None


class FakeStream:
    """Plays blocks into the callback when started; can fail to open or stop ("unplugged")."""

    def __init__(self, callback, blocks, overflow_at=()):
        self.callback, self.blocks, self.overflow_at = callback, blocks, set(overflow_at)
        self.active = False
        self.closed = False

    def start(self):
        self.active = True
        for i, b in enumerate(self.blocks):
            status = type("S", (), {"input_overflow": i in self.overflow_at})()
            self.callback(b[:, None], len(b), None, status)
        self.active = False  # the device went away after these blocks

    def close(self):
        self.closed = True


def test_microphone_survives_overflow_and_a_disappearing_device():
    block = np.full(320, 0.1, dtype=np.float32)
    opened = []

    def factory(callback, opts):
        opened.append(len(opened))
        if len(opened) == 2:
            raise OSError("device unavailable")  # first reopen attempt fails
        s = FakeStream(callback, [block] * 5, overflow_at=(1,) if len(opened) == 1 else ())
        return s

    slept = []
    mic = MicSource(MicOptions(max_retries=3), stream_factory=factory, sleep=slept.append)
    got = []
    for chunk in mic.chunks(stop=lambda: len(got) >= 10):
        got.append(chunk)
    assert len(got) == 10 and all(np.allclose(c.samples, 0.1) for c in got)
    assert mic.overflows == 1 and mic.reopens >= 1
    assert len(opened) >= 3 and 0.5 in slept  # back-off before the retry


def test_microphone_gives_up_with_a_clear_error():
    def factory(callback, opts):
        raise OSError("no such device")

    mic = MicSource(MicOptions(device="USB mic", max_retries=2), stream_factory=factory, sleep=lambda s: None)
    with pytest.raises(RuntimeError, match="cannot open input device 'USB mic': no such device"):
        next(mic.chunks())


def test_microphone_with_a_loudspeaker_channel_cancels_its_echo():
    """A 3-channel device whose last channel is what the loudspeaker plays (a loopback): the
    callback keeps (microphone, loudspeaker) pairs, and the chunks are the microphone with the
    loudspeaker's echo cancelled (here there is none: the two microphone channels carry a tone,
    the loudspeaker another, which must not leak into the chunks as an average would)."""
    pytest.importorskip("livekit")
    t = np.arange(320 * 50) / 16000
    mic_tone = (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    played = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    frames = np.stack([mic_tone, mic_tone, played], axis=1)

    class ThreeChannels(FakeStream):
        def start(self):
            self.active = True
            for i in range(0, len(frames), 320):
                self.callback(frames[i : i + 320], 320, None, None)
            self.active = False

    mic = MicSource(MicOptions(channels=3, reference_channel=-1),
                    stream_factory=lambda cb, opts: ThreeChannels(cb, []), sleep=lambda s: None)
    assert "channel 2 the loudspeaker's" in mic.description
    got = []
    for chunk in mic.chunks(stop=lambda: len(got) >= 49):
        got.append(chunk)
    x = np.concatenate([c.samples for c in got])[3200:]  # after AEC3's first 0.2 s
    spectrum = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    near = lambda hz: spectrum[np.abs(f - hz) < 20].max()  # noqa: E731
    assert near(300) > 10 * near(1000)  # the microphone's tone, not the loudspeaker's
    with pytest.raises(AudioError, match="reference channel 3 must be one of its 3 channels"):
        MicSource(MicOptions(channels=3, reference_channel=3), stream_factory=lambda cb, opts: None)
    with pytest.raises(AudioError, match="reference channel 0 must be one of its 1 channels"):
        MicSource(MicOptions(reference_channel=0), stream_factory=lambda cb, opts: None)

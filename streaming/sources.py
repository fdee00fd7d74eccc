"""Audio sources for the listener: a file, raw PCM on stdin, or a microphone.

Every source yields `Chunk`s of 16 kHz mono float32 samples with their position in the stream
(`audio_s`, from the samples delivered so far). With echo cancellation a chunk also carries the
model's own copy of its samples (`model_samples`; see echo.py). Resampling is streaming (soxr),
so a source can run for hours without holding the whole input in memory.

Pacing: a file is played at real-time pace by default (the listener then sees audio as a
microphone would deliver it) or as fast as possible (`realtime=False`). The clock and sleep are
injectable, so tests do not sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from desta_edge.runtime.audio import SAMPLE_RATE, AudioError, check_complete, check_sample_rate

logger = logging.getLogger(__name__)

CHUNK_MS = 20  # what a source hands over at a time


@dataclass(frozen=True)
class Chunk:
    samples: np.ndarray  # [n] float32, 16 kHz mono
    audio_s: float  # stream position of the first sample
    # [n]: what the model should hear of the same samples, where that differs (echo cancellation:
    # `samples` decide whether someone speaks, these keep what they say over the loudspeaker)
    model_samples: np.ndarray | None = None


class _Resampler:
    """Streaming downmix + resample to 16 kHz mono; checks samples as they pass."""

    def __init__(self, rate: int, source: str) -> None:
        check_sample_rate(rate, source)
        self.source = source
        self.rate = rate
        self._rs = None
        if rate != SAMPLE_RATE:
            import soxr

            self._rs = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.non_finite = 0  # NaN/Inf input samples replaced by silence

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = block.astype(np.float32, copy=False)
        if x.ndim == 2:
            x = x.mean(axis=1)
        bad = ~np.isfinite(x)
        if bad.any():
            self.non_finite += int(bad.sum())
            logger.warning("%s: %d non-finite samples replaced by silence", self.source, int(bad.sum()))
            x = np.where(bad, 0.0, x).astype(np.float32)
        if self._rs is not None:
            x = self._rs.resample_chunk(x, last=last)
        return x


def _reference_index(channel: int, channels: int, source: str) -> int:
    """The loudspeaker's channel as an index among `channels`; an AudioError unless it is one of
    them and at least one other is left for the microphone."""
    if channels < 2 or not -channels <= channel < channels:
        raise AudioError(f"{source}: the reference channel {channel} must be one of its {channels} channels, and the "
                         "microphone at least one other")
    return channel % channels


class _EchoCancelled:
    """Like `_Resampler`, for input whose channel `channel` carries what the loudspeaker plays: the
    other channels (the microphone) come out with that signal's echo removed (`echo.EchoCanceller`),
    and, where libspeexdsp is installed, as two columns: the endpointer's copy and the model's
    (`echo.DuplexCanceller`)."""

    def __init__(self, rate: int, source: str, channel: int, channels: int) -> None:
        from .echo import DuplexCanceller, EchoCanceller, SpeexCanceller

        self.channel = _reference_index(channel, channels, source)
        self.mic, self.ref = _Resampler(rate, source), _Resampler(rate, f"{source} (reference channel)")
        self.aec = EchoCanceller()
        self.duplex = False
        try:
            self.aec, self.duplex = DuplexCanceller(self.aec, SpeexCanceller()), True
        except (RuntimeError, OSError) as e:
            logger.warning("the model hears AEC3's output, which garbles speech over the loudspeaker (%s)", e)

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        mic, ref = (np.delete(block, self.channel, axis=1), block[:, self.channel]) if block.size else (block, block)
        mic, ref = self.mic(mic, last), self.ref(ref, last)  # equal lengths: the same resampling
        outs = [self.aec(mic, ref)] + ([self.aec.flush()] if last else [])
        # whole 10 ms frames: the two copies are equally long
        return np.concatenate([np.stack(o, axis=1) for o in outs] if self.duplex else outs)


def _chunks(blocks: Iterator[np.ndarray], rate: int, source: str, reference: tuple[int, int] | None = None
            ) -> Iterator[Chunk]:
    """16 kHz mono chunks of `blocks`; `reference`: (channel, channels) when a channel carries the
    loudspeaker's signal, to be cancelled from the others."""
    convert = _Resampler(rate, source) if reference is None else _EchoCancelled(rate, source, *reference)
    return _reframe(blocks, convert)  # built first, so that bad settings fail before the first read


def _reframe(blocks: Iterator[np.ndarray], convert: Callable[..., np.ndarray]) -> Iterator[Chunk]:
    """CHUNK_MS chunks of what `convert` makes of the blocks: [n] samples, or [n, 2] samples and
    the model's copy of them."""
    n = SAMPLE_RATE * CHUNK_MS // 1000
    delivered = 0  # 16 kHz samples handed out
    pending = None

    def chunk(x: np.ndarray) -> Chunk:
        if x.ndim == 1:
            return Chunk(x, delivered / SAMPLE_RATE)
        return Chunk(np.ascontiguousarray(x[:, 0]), delivered / SAMPLE_RATE, np.ascontiguousarray(x[:, 1]))

    for block in blocks:
        out = convert(block)
        pending = out if pending is None else np.concatenate([pending, out])
        while len(pending) >= n:
            yield chunk(pending[:n].copy())
            delivered += n
            pending = pending[n:]
    out = convert(np.zeros(0, dtype=np.float32), last=True)
    pending = out if pending is None else np.concatenate([pending, out])
    if len(pending):
        yield chunk(pending)


def paced(chunks: Iterator[Chunk], *, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Chunk]:
    """Release each chunk no earlier than its end time after the first (real-time pace)."""
    t0 = None
    for chunk in chunks:
        if t0 is None:
            t0 = clock()
        due = t0 + chunk.audio_s + len(chunk.samples) / SAMPLE_RATE
        wait = due - clock()
        if wait > 0:
            sleep(wait)
        yield chunk


def file_source(path: str | Path, *, block_frames: int = 4096, reference_channel: int | None = None) -> Iterator[Chunk]:
    """Chunks of an audio file soundfile can read, any rate and channel count (not paced).
    reference_channel: the channel that carries what the loudspeaker played, whose echo is removed
    from the other channels (`echo.EchoCanceller`; -1: the last)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"cannot decode audio file {path}: {e}") from e
    with open(path, "rb") as f:
        check_complete(f.read(1 << 16), path.stat().st_size, str(path))  # a WAV cut short would end early

    def blocks() -> Iterator[np.ndarray]:
        with sf.SoundFile(str(path)) as f:
            yield from f.blocks(blocksize=block_frames, dtype="float32", always_2d=True)

    reference = None if reference_channel is None else (reference_channel, info.channels)
    return _chunks(blocks(), info.samplerate, str(path), reference)


def pcm_source(stream: BinaryIO, *, rate: int = SAMPLE_RATE, channels: int = 1, block_bytes: int = 6400,
               reference_channel: int | None = None) -> Iterator[Chunk]:
    """Chunks of raw little-endian signed 16-bit PCM (e.g. `arecord -f S16_LE | desta-edge listen --source -`),
    interleaved when `channels` > 1; reference_channel as for `file_source`."""
    if channels < 1:
        raise AudioError(f"stdin: invalid channel count {channels}")
    frame_bytes = 2 * channels
    block_bytes -= block_bytes % frame_bytes

    def blocks() -> Iterator[np.ndarray]:
        carry = b""
        while True:
            data = stream.read(block_bytes)
            if not data:
                break
            data = carry + data
            usable = len(data) - len(data) % frame_bytes
            carry = data[usable:]
            pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels)
            yield pcm.astype(np.float32) / 32768.0
        if carry:
            logger.warning("stdin: dropped %d trailing bytes (not a whole %d-channel s16le frame)", len(carry), channels)

    return _chunks(blocks(), rate, "stdin", None if reference_channel is None else (reference_channel, channels))


# ----------------------------------------------------------------------------- microphone


class RingBuffer:
    """A fixed-size single-producer/single-consumer float32 ring; the writer never blocks.

    `write` is called from the audio callback: it copies into preallocated memory and, when the
    reader has fallen behind, drops the oldest audio and counts it as an overflow. `width`: samples
    of `width` channels each (`[n, width]` in and out) instead of mono (`[n]`).
    """

    def __init__(self, capacity: int, width: int | None = None) -> None:
        self._data = np.zeros((capacity,) if width is None else (capacity, width), dtype=np.float32)
        self._capacity = capacity
        self._write = 0  # total samples written (monotonic)
        self._read = 0  # total samples read
        self._lock = threading.Lock()
        self.dropped = 0  # samples lost because the reader was too slow

    def write(self, x: np.ndarray) -> None:
        n = len(x)
        if n > self._capacity:
            x, n = x[-self._capacity :], self._capacity
        with self._lock:
            start = self._write % self._capacity
            first = min(n, self._capacity - start)
            self._data[start : start + first] = x[:first]
            self._data[: n - first] = x[first:]
            self._write += n
            over = self._write - self._read - self._capacity
            if over > 0:
                self._read += over
                self.dropped += over

    def read(self, n: int) -> np.ndarray | None:
        """Exactly n samples if that many are buffered, else None."""
        with self._lock:
            if self._write - self._read < n:
                return None
            start = self._read % self._capacity
            idx = (start + np.arange(n)) % self._capacity
            out = self._data[idx]
            self._read += n
            return out


@dataclass(frozen=True)
class MicOptions:
    device: str | int | None = None  # sounddevice name or index; None = the default input
    rate: int | None = None  # capture rate (resampled to 16 kHz); None: 16 kHz if the device takes it, else its own
    channels: int | None = None  # captured channels (averaged to mono); None: 1 if the device takes it, else 2
    latency: str | float = "low"  # PortAudio input latency: "low", "high" (its default) or seconds
    buffer_s: float = 5.0  # ring buffer length: how far the reader may fall behind
    retry_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)  # back-off between reopen attempts
    max_retries: int = 20  # reopen attempts after a device error before giving up
    # the input channel that carries what the loudspeaker plays (a loopback channel of a microphone
    # array or sound card), whose echo is cancelled from the other channels (`echo.py`; -1: the last);
    # every channel of the device is captured then
    reference_channel: int | None = None


def _sounddevice():
    try:
        import sounddevice
    except ImportError as e:
        raise RuntimeError("microphone input needs sounddevice: pip install sounddevice") from e
    except OSError as e:  # the PortAudio shared library is missing
        raise RuntimeError(f"microphone input needs PortAudio: apt-get install libportaudio2 ({e})") from e
    return sounddevice


def capture_settings(opts: MicOptions) -> tuple[MicOptions, str]:
    """`opts` with a rate and channel count the device accepts, and the device's name (asks
    PortAudio, opens nothing). Without a choice: 16 kHz mono where the device takes it (nothing to
    resample), else its default rate and mono or stereo. A device that does not exist, or that
    takes none of these, is an AudioError naming it."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(opts.device, kind="input")
    except (ValueError, sd.PortAudioError) as e:
        which = "no default input device" if opts.device is None else f"no input device {opts.device!r}"
        raise AudioError(f"{which} ({e}); see desta-edge listen --list-devices") from e
    rates = [opts.rate] if opts.rate else [SAMPLE_RATE, int(info["default_samplerate"])]
    if opts.reference_channel is not None:  # every channel: the loudspeaker's and the microphone's
        channels = [opts.channels or int(info["max_input_channels"])]
    else:
        channels = [opts.channels] if opts.channels else [1, min(2, int(info["max_input_channels"]))]
    errors = []
    for rate in dict.fromkeys(rates):
        for ch in dict.fromkeys(channels):
            try:
                sd.check_input_settings(device=opts.device, channels=ch, samplerate=rate, dtype="float32")
            except (ValueError, sd.PortAudioError) as e:
                errors.append(f"{rate} Hz x {ch}: {e}")
                continue
            return replace(opts, rate=rate, channels=ch), str(info["name"])
    raise AudioError(f"input device {info['name']!r} takes none of the capture settings tried: " + "; ".join(errors))


def list_devices() -> list[dict]:
    sd = _sounddevice()
    return [{"index": i, "name": d["name"], "inputs": d["max_input_channels"], "default_rate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


class MicSource:
    """Microphone chunks via a sounddevice InputStream feeding a ring buffer.

    `stream_factory(callback, opts)` opens the input stream (injectable for tests); by default
    `sounddevice.InputStream`, with the device and its settings checked here (`capture_settings`),
    so a wrong device fails at once. The stream opens when the chunks are first read. A device
    error (unplugged, disappeared) closes the stream and reopens it with back-off; the gap is
    reported and counted.
    """

    def __init__(self, opts: MicOptions = MicOptions(), stream_factory=None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if stream_factory is None:
            opts, name = capture_settings(opts)
        else:
            opts, name = replace(opts, rate=opts.rate or SAMPLE_RATE, channels=opts.channels or 1), str(opts.device)
        self.opts = opts
        self.description = f"{name}, {opts.rate} Hz, {opts.channels} ch"  # for people: which device, how
        self._reference = None  # the loudspeaker's channel, if the device carries it
        if opts.reference_channel is not None:
            self._reference = _reference_index(opts.reference_channel, opts.channels, f"microphone {name!r}")
            self.description += f", channel {self._reference} the loudspeaker's (echo cancelled)"
        logger.info("microphone: %s", self.description)
        self._factory = stream_factory or self._open_sounddevice
        self._sleep = sleep
        # mono, or (microphone, loudspeaker) pairs when a channel carries the loudspeaker's signal
        self.ring = RingBuffer(int(opts.buffer_s * opts.rate), None if self._reference is None else 2)
        self.overflows = 0  # input overflows the audio driver reported
        self.reopens = 0  # times the device was reopened after an error
        self.input_latency_s: float | None = None  # what PortAudio reports for the open stream
        self._mono = np.zeros(opts.rate * CHUNK_MS // 1000, dtype=np.float32)  # downmix scratch (callback)
        self._pair = np.zeros((len(self._mono), 2), dtype=np.float32)  # (microphone, loudspeaker) scratch

    def _open_sounddevice(self, callback, opts: MicOptions):
        sd = _sounddevice()
        return sd.InputStream(device=opts.device, samplerate=opts.rate, channels=opts.channels,
                              dtype="float32", blocksize=opts.rate * CHUNK_MS // 1000, latency=opts.latency,
                              callback=callback)

    def _callback(self, indata, frames, time_info, status) -> None:
        # runs on the audio thread: copy, count, never block or raise
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        if self._reference is not None:
            if len(self._pair) < frames:
                self._pair = np.zeros((frames, 2), dtype=np.float32)
            pair, ref = self._pair[:frames], indata[:, self._reference]
            np.sum(indata, axis=1, out=pair[:, 0])  # the other channels' mean: the microphone
            pair[:, 0] -= ref
            pair[:, 0] /= indata.shape[1] - 1
            pair[:, 1] = ref
            self.ring.write(pair)
            return
        if indata.shape[1] == 1:
            self.ring.write(indata[:, 0])
            return
        if len(self._mono) < frames:  # only if the driver hands over a longer block than asked for
            self._mono = np.zeros(frames, dtype=np.float32)
        self.ring.write(np.mean(indata, axis=1, out=self._mono[:frames]))

    def _open(self):
        for attempt in range(self.opts.max_retries + 1):
            try:
                stream = self._factory(self._callback, self.opts)
                stream.start()
                latency = getattr(stream, "latency", None)
                if isinstance(latency, (int, float)):
                    self.input_latency_s = float(latency)
                    logger.info("microphone open: input latency %.1f ms", latency * 1000)
                return stream
            except Exception as e:  # device missing or busy
                if attempt == self.opts.max_retries:
                    raise RuntimeError(f"cannot open input device {self.opts.device!r}: {e}") from e
                wait = self.opts.retry_s[min(attempt, len(self.opts.retry_s) - 1)]
                logger.warning("input device %r unavailable (%s); retrying in %.1f s", self.opts.device, e, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def blocks(self, stop: Callable[[], bool] = lambda: False) -> Iterator[np.ndarray]:
        n = self.opts.rate * CHUNK_MS // 1000
        stream = self._open()
        try:
            while not stop():
                block = self.ring.read(n)
                if block is not None:
                    yield block
                    continue
                if not getattr(stream, "active", True):  # the device went away
                    logger.warning("input device %r stopped; reopening", self.opts.device)
                    stream.close()
                    self.reopens += 1
                    stream = self._open()
                    continue
                self._sleep(CHUNK_MS / 1000 / 2)
        finally:
            stream.close()

    def chunks(self, stop: Callable[[], bool] = lambda: False) -> Iterator[Chunk]:
        return _chunks(self.blocks(stop), self.opts.rate, f"microphone {self.opts.device!r}",
                       None if self._reference is None else (1, 2))

"""A capture device that PortAudio really opens, on a machine without a sound card.

ALSA's `file` plugin over its `null` device reads what it captures from a file; here that file is
a FIFO, and a thread writes float32 samples into it at real-time pace, so the device delivers
audio the way a microphone does: through PortAudio's ALSA host API, sounddevice's callback and
the listener's ring buffer. The configuration goes into `ALSA_CONFIG_PATH` (set it before
PortAudio starts, i.e. in a child process). PortAudio opens the device as float32, which the
`null` device accepts, so the FIFO carries float32 frames at the rate and channel count the
stream was opened with.

Blocks larger than a pipe write the kernel does whole came out garbled in trials (48 kHz stereo,
7,680 bytes per 20 ms; the plugin seems not to retry a short read). So the feeder writes each
20 ms block in one write of at most PIPE_BUF bytes (written whole or not at all) into a pipe of
that size. That covers 16 kHz mono or stereo and 48 kHz mono, which all came out exact; larger
blocks are refused.

The test process holds the FIFO open for reading and writing: opening the device then never
blocks (PortAudio opens it to probe it), and a reader never sees end-of-file. While nobody
reads, the pipe (one page) fills and the feeder waits: the audio starts when the stream does.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np

DEVICE = "deskmic"
SYSTEM_CONFIG = Path("/usr/share/alsa/alsa.conf")
BLOCK_S = 0.02  # what the feeder writes at a time
PIPE_BYTES = 4096  # the FIFO's capacity, and the largest write the kernel does whole (PIPE_BUF)


def available() -> str | None:
    """Why a virtual microphone cannot run here, or None if it can."""
    if not SYSTEM_CONFIG.is_file():
        return f"no ALSA configuration at {SYSTEM_CONFIG}"
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        return "sounddevice is not installed"
    except OSError as e:
        return f"PortAudio is missing ({e})"
    return None


class VirtualMic:
    def __init__(self, directory: Path, rate: int = 16_000, channels: int = 1) -> None:
        if int(rate * BLOCK_S) * channels * 4 > PIPE_BYTES:
            raise ValueError(f"{rate} Hz x {channels} channels: a {BLOCK_S * 1000:.0f} ms block exceeds {PIPE_BYTES} bytes")
        self.rate, self.channels = rate, channels
        self.fifo = directory / "mic.fifo"
        os.mkfifo(self.fifo)
        self.config = directory / "alsa.conf"
        self.config.write_text(
            f"<{SYSTEM_CONFIG}>\n"
            f"pcm.{DEVICE} {{\n"
            '  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
            f'  infile "{self.fifo}"\n  format "raw"\n'
            '  hint { show on description "desta-edge test microphone" }\n}\n'
        )
        self.env = {**os.environ, "ALSA_CONFIG_PATH": str(self.config)}
        self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # little audio waits in the pipe before a reader comes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def play(self, samples: np.ndarray) -> None:
        """Feed `samples` ([n] or [n, channels], float in [-1, 1]) at real-time pace, then silence
        until `close()`."""
        frames = np.asarray(samples, dtype="<f4").reshape(len(samples), -1)
        if frames.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channel(s), got {frames.shape[1]}")
        self._thread = threading.Thread(target=self._feed, args=(frames,), daemon=True)
        self._thread.start()

    def _feed(self, frames: np.ndarray) -> None:
        step = int(self.rate * BLOCK_S)
        silence = np.zeros((step, self.channels), dtype="<f4").tobytes()
        due, i = None, 0
        while not self._stop.is_set():
            block = frames[i : i + step].tobytes() if i < len(frames) else silence
            while not self._stop.is_set():
                try:
                    os.write(self._fd, block)  # at most PIPE_BYTES: written whole or not at all
                    break
                except BlockingIOError:  # the pipe is full: nobody reads yet, so the clock waits too
                    due = None
                    time.sleep(0.005)
            i += step
            now = time.monotonic()
            due = (now if due is None else due) + step / self.rate
            if due > now:
                time.sleep(due - now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._fd)

    def __enter__(self) -> VirtualMic:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

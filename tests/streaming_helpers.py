"""Helpers for the streaming tests: a deterministic energy VAD and frame-exact test signals."""

from __future__ import annotations

import numpy as np

RATE = 16000


class EnergyVad:
    """Stands in for webrtcvad in frame-exact tests: a frame is speech iff its RMS is high."""

    def __init__(self, threshold: float = 0.05, fail_on: set[int] | None = None) -> None:
        self.threshold = threshold
        self.calls = 0
        self.fail_on = fail_on or set()

    def is_speech(self, pcm: bytes, rate: int) -> bool:
        assert rate == RATE and len(pcm) in (320, 640, 960), "webrtcvad's frame rules"
        self.calls += 1
        if self.calls - 1 in self.fail_on:
            raise RuntimeError("Error while processing frame")
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        return float(np.sqrt(np.mean(x**2))) > self.threshold


def voiced(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * RATE)), dtype=np.float32)


def signal(*parts: tuple[str, float]) -> np.ndarray:
    """signal(("s", 0.5), ("v", 1.0), ...) -> silence/voiced pieces joined."""
    return np.concatenate([voiced(d) if kind == "v" else silence(d) for kind, d in parts])

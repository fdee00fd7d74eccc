"""The microphone path through a real audio stack: PortAudio's ALSA host API opening a capture
device (ALSA's file plugin fed at real-time pace, see virtual_mic.py), sounddevice's callback, the
ring buffer and `desta-edge listen --source mic`. No sound card needed. Also the choice of a
capture rate and channel count a device accepts, against a fake sounddevice module."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from desta_edge.runtime.audio import AudioError
from desta_edge.streaming import sources
from desta_edge.streaming.sources import MicOptions, capture_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import speak  # noqa: E402
from virtual_mic import DEVICE, VirtualMic, available  # noqa: E402

needs_device = pytest.mark.skipif(available() is not None, reason=f"no virtual microphone: {available()}")

# Reads `seconds` of 16 kHz audio from a microphone and saves it with the source's counters.
READ_MIC = """
import json, sys
import numpy as np
from desta_edge.streaming.sources import MicOptions, MicSource
device, rate, channels, seconds, out = sys.argv[1:]
mic = MicSource(MicOptions(device=device, rate=int(rate) or None, channels=int(channels) or None))
got, need = [], float(seconds) * 16000
for chunk in mic.chunks(stop=lambda: sum(map(len, got)) >= need):
    got.append(chunk.samples)
np.save(out, np.concatenate(got))
print(json.dumps({"description": mic.description, "overflows": mic.overflows, "dropped": mic.ring.dropped,
                  "latency_s": mic.input_latency_s}))
"""


def read_mic(mic: VirtualMic, tmp_path: Path, seconds: float, rate: int = 0, channels: int = 0) -> tuple[np.ndarray, dict]:
    out = tmp_path / "got.npy"
    r = subprocess.run([sys.executable, "-c", READ_MIC, DEVICE, str(rate), str(channels), str(seconds), str(out)],
                       env=mic.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return np.load(out), json.loads(r.stdout.splitlines()[-1])


@needs_device
def test_microphone_through_portaudio_delivers_every_sample(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 32000).astype(np.float32)
    with VirtualMic(tmp_path) as mic:
        mic.play(x)
        got, info = read_mic(mic, tmp_path, seconds=2.0)
    assert info.pop("latency_s") > 0  # what PortAudio reports for the open stream
    assert info == {"description": f"{DEVICE}, 16000 Hz, 1 ch", "overflows": 0, "dropped": 0}
    np.testing.assert_array_equal(got[: len(x)], x)  # nothing lost, reordered or altered


@needs_device
def test_microphone_at_48_khz_is_resampled(tmp_path):
    t = np.arange(48000 * 2) / 48000
    x = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    with VirtualMic(tmp_path, rate=48000) as mic:
        mic.play(x)
        got, info = read_mic(mic, tmp_path, seconds=1.5, rate=48000)
    assert info.pop("latency_s") > 0
    assert info == {"description": f"{DEVICE}, 48000 Hz, 1 ch", "overflows": 0, "dropped": 0}
    want = soxr.resample(x, 48000, 16000, quality="HQ")
    n = len(got) - 1600  # the streaming resampler's tail is still in flight
    np.testing.assert_allclose(got[1600:n], want[1600:n], atol=2e-3)


@needs_device
def test_list_devices_shows_the_capture_device(tmp_path):
    with VirtualMic(tmp_path) as mic:
        r = subprocess.run([sys.executable, "-m", "desta_edge", "listen", "--list-devices", "--json"], env=mic.env,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert DEVICE in [d["name"] for d in json.loads(r.stdout)["devices"]]


@pytest.mark.slow
@needs_device
def test_listen_answers_spoken_questions_from_a_microphone(tmp_path):
    questions = [("What is the capital of France?", "capital", dict(voice="en-us", rate=150)),
                 ("What colour is the sky?", "sky", dict(voice="en-gb", rate=170, pitch=35))]
    parts = [np.zeros(16000, dtype=np.float32)]
    for i, (text, _, voice) in enumerate(questions):
        y, sr = sf.read(str(speak(text, tmp_path / f"q{i}.wav", **voice)), dtype="float32")
        parts += [soxr.resample(y, sr, 16000), np.zeros(48000, dtype=np.float32)]
    mic = VirtualMic(tmp_path)
    # barge-in off: on a busy machine the second question may come while the first answer streams
    stderr = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "desta_edge", "listen", "--source", "mic", "--device", DEVICE,
                             "--json", "--max-new-tokens", "8", "--no-barge-in"], env=mic.env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    events: list[dict] = []
    try:
        mic.play(np.concatenate(parts))
        deadline = time.monotonic() + 180
        while sum(e["type"] == "answer" for e in events) < len(questions) and time.monotonic() < deadline:
            try:
                events.append(json.loads(lines.get(timeout=1)))
            except queue.Empty:
                continue
        time.sleep(1)
        proc.send_signal(signal.SIGINT)  # how a person stops it
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        mic.close()
        stderr.close()
    reader.join(timeout=10)  # it ends with the process's stdout, after the last lines
    while not lines.empty():
        events.append(json.loads(lines.get()))
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    answers = [e for e in events if e["type"] == "answer"]
    heard = [(e["type"], e.get("text")) for e in events if e["type"] in ("transcript", "answer", "cancelled")]
    assert [key in a["transcript"].lower() for a, (_, key, _) in zip(answers, questions)] == [True, True], heard
    summary = events[-1]
    assert summary["type"] == "summary" and summary["answers"] == 2 and summary["errors"] == 0
    assert summary["input_overflows"] == summary["dropped_samples"] == summary["device_reopens"] == 0
    assert summary["input_latency_ms"] > 0


# ------------------------------------------------------------------ choosing capture settings


class FakeSoundDevice:
    """query_devices / check_input_settings of a device that takes only `rates` x `channels`."""

    class PortAudioError(Exception):
        pass

    def __init__(self, name="USB mic", rates=(16000,), channels=(1,), default_rate=48000.0, max_channels=2):
        self.name, self.rates, self.channels = name, rates, channels
        self.default_rate, self.max_channels = default_rate, max_channels
        self.checked = []

    def query_devices(self, device=None, kind=None):
        if device not in (None, self.name, 0):
            raise ValueError(f"No input device matching {device!r}")
        return {"name": self.name, "default_samplerate": self.default_rate, "max_input_channels": self.max_channels}

    def check_input_settings(self, device=None, channels=None, samplerate=None, dtype=None):
        self.checked.append((samplerate, channels))
        if samplerate not in self.rates:
            raise self.PortAudioError("Invalid sample rate")
        if channels not in self.channels:
            raise self.PortAudioError("Invalid number of channels")


def test_capture_prefers_16_khz_mono(monkeypatch):
    monkeypatch.setattr(sources, "_sounddevice", lambda: FakeSoundDevice(rates=(16000, 48000), channels=(1, 2)))
    opts, name = capture_settings(MicOptions())
    assert (opts.rate, opts.channels, name) == (16000, 1, "USB mic")


def test_capture_falls_back_to_the_devices_own_rate_and_stereo(monkeypatch):
    fake = FakeSoundDevice(rates=(48000,), channels=(2,))
    monkeypatch.setattr(sources, "_sounddevice", lambda: fake)
    opts, _ = capture_settings(MicOptions(device="USB mic"))
    assert (opts.rate, opts.channels) == (48000, 2)
    assert fake.checked == [(16000, 1), (16000, 2), (48000, 1), (48000, 2)]


def test_capture_with_a_loudspeaker_channel_takes_every_channel(monkeypatch):
    """A microphone array with a loopback of its output (6 channels here): all of them are
    captured, so that the reference channel can be told from the microphones."""
    fake = FakeSoundDevice(rates=(16000,), channels=(6,), max_channels=6)
    monkeypatch.setattr(sources, "_sounddevice", lambda: fake)
    opts, _ = capture_settings(MicOptions(reference_channel=5))
    assert (opts.rate, opts.channels) == (16000, 6) and fake.checked == [(16000, 6)]


def test_capture_errors_name_the_device_and_what_was_tried(monkeypatch):
    monkeypatch.setattr(sources, "_sounddevice", lambda: FakeSoundDevice(rates=(44100,)))
    with pytest.raises(AudioError, match=r"no input device 'Blue Yeti' .*--list-devices"):
        capture_settings(MicOptions(device="Blue Yeti"))
    with pytest.raises(AudioError, match=r"'USB mic' takes none .*16000 Hz x 1: Invalid sample rate"):
        capture_settings(MicOptions())
    with pytest.raises(AudioError, match=r"8000 Hz x 1: Invalid sample rate$"):  # an explicit choice is the only one tried
        capture_settings(MicOptions(rate=8000, channels=1))


def test_listen_rejects_a_missing_microphone_before_loading_the_model(monkeypatch, capsys):
    from desta_edge.cli import main

    monkeypatch.setattr(sources, "_sounddevice", lambda: FakeSoundDevice())
    monkeypatch.setattr("desta_edge.DestaModel.from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["listen", "--device", "Blue Yeti"]) == 2
    assert "no input device 'Blue Yeti'" in capsys.readouterr().err

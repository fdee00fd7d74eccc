"""`desta-edge serve`: the listener behind a WebSocket, driven by real clients on localhost.

The tiny random model answers; a deterministic energy detector segments, so the events are
exact and comparable with the in-process listener's on the same audio."""

import json

import numpy as np
import pytest

pytest.importorskip("websockets")
from desta_edge.streaming.assistant import Assistant, AssistantOptions
from desta_edge.streaming.server import Server, ServerOptions, SessionParams
from streaming_helpers import EnergyVad, signal
from test_assistant import listen
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

# sine tones stand in for speech; the model's speech check hears no words in them, so the filler drop
# (tests/test_assistant.py) is off here
OPTS = AssistantOptions(max_new_tokens=6, turn_detection=False, barge_in=False, drop_fillers=False)
SPEECH = signal(("s", 0.5), ("v", 0.8), ("s", 1.0), ("v", 0.6), ("s", 1.0))


@pytest.fixture()
def server(tiny_model):
    s = Server(tiny_model, OPTS, server=ServerOptions(port=0), vad_factory=EnergyVad, ready={"warm_up_ms": 1.0})
    s.start()
    yield s
    s.stop()


def pcm(x: np.ndarray, channels: int = 1) -> bytes:
    y = (np.clip(x, -1, 1) * 32767).astype("<i2")
    return np.repeat(y[:, None], channels, axis=1).tobytes()


def session(port: int, payload: bytes, piece: int = 640, query: str = "") -> list[dict]:
    """Send `payload` in messages of `piece` bytes, then `end`; the events until the summary."""
    with connect(f"ws://127.0.0.1:{port}/{query}") as ws:
        for i in range(0, len(payload), piece):
            ws.send(payload[i : i + piece])
        ws.send(json.dumps({"type": "end"}))
        events = []
        while not events or events[-1]["type"] != "summary":
            events.append(json.loads(ws.recv(timeout=60)))
        return events


def without_walls(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("wall_s", "timings_ms")} for e in events]


def test_a_client_gets_the_listeners_events(server, tiny_model):
    """Over the socket, the same events as the in-process listener on the same audio, between a
    `ready` and a `summary`; PCM split mid-sample across messages changes nothing."""
    events = session(server.port, pcm(SPEECH), piece=333)  # odd sizes: samples split across messages
    assert events[0] == {"type": "ready", "audio_s": 0.0, "wall_s": 0.0, "rate": 16000, "channels": 1,
                         "reference_channel": None,
                         "barge_in": False, "resume": True, "echo_guard": True, "half_duplex": False,
                         "max_waiting": 0, "max_new_tokens": 6,
                         "system": OPTS.system, "prompt": OPTS.prompt, "idle_timeout_s": 60.0, "warm_up_ms": 1.0}
    summary = events[-1]
    assert summary["type"] == "summary" and summary["answers"] == 2 and summary["errors"] == 0
    assert summary["ended_by"] == "client"
    local, _ = listen(tiny_model, SPEECH, OPTS)
    assert without_walls(events[1:-1]) == without_walls(local)
    assert [e["type"] for e in events].count("answer") == 2


def test_other_rates_and_channels_are_resampled(server):
    """A 48 kHz stereo stream, announced in the query, is heard like the 16 kHz mono one."""
    t = np.arange(int(len(SPEECH) * 3)) / 48000
    x48 = np.interp(t, np.arange(len(SPEECH)) / 16000, SPEECH).astype(np.float32)
    events = session(server.port, pcm(x48, channels=2), piece=3840, query="?rate=48000&channels=2")
    assert events[0]["rate"] == 48000 and events[0]["channels"] == 2
    assert events[-1]["answers"] == 2
    ends = [e["speech_end_s"] for e in events if e["type"] == "speech_end"]
    assert ends == pytest.approx([1.3, 2.9], abs=0.03)


def test_a_client_sends_its_loudspeakers_signal_as_a_reference_channel(server):
    """`channels=2&reference_channel=1`: channel 1 (here a loud tone the loudspeaker plays between the
    requests) is cancelled from channel 0, not averaged into it: the requests are heard as in mono."""
    pytest.importorskip("livekit")
    t = np.arange(len(SPEECH)) / 16000
    tone = np.where(np.abs(SPEECH) > 0, 0.0, 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = (np.clip(np.stack([SPEECH, tone], axis=1), -1, 1) * 32767).astype("<i2").tobytes()
    events = session(server.port, stereo, piece=1280, query="?channels=2&reference_channel=1")
    assert events[0]["channels"] == 2 and events[0]["reference_channel"] == 1
    assert events[-1]["answers"] == 2
    ends = [e["speech_end_s"] for e in events if e["type"] == "speech_end"]
    assert ends == pytest.approx([1.3, 2.9], abs=0.03)


def test_one_client_at_a_time_and_free_again_after_a_disconnect(server):
    """A second client is refused with 503 while one is connected; a client that leaves without
    `end` frees the server at once (its pending work dropped), and the next one is served."""
    with connect(f"ws://127.0.0.1:{server.port}/") as first:
        assert json.loads(first.recv())["type"] == "ready"
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{server.port}/")
        assert refused.value.response.status_code == 503
        first.send(pcm(SPEECH[: 16000 * 2]))  # speech, then the client vanishes mid-utterance
    events = session(server.port, pcm(SPEECH))
    assert events[-1]["answers"] == 2 and server.sessions == 2


def test_bad_requests_get_clear_answers(server):
    """A bad format is refused at the handshake (400, naming the parameter); an unknown text
    message gets an error event and the stream goes on."""
    for query, says in (("?rate=abc", b"rate must be"), ("?rate=0", b"rate must be"),
                        ("?rate=4000", b"rate must be an integer from 8000 to 384000"),
                        ("?channels=99", b"channels must be"), ("?barge_in=yes", b"barge_in must be"),
                        ("?resume=2", b"resume must be"), ("?half_duplex=yes", b"half_duplex must be"),
                        ("?reference_channel=0", b"reference_channel needs channels >= 2"),
                        ("?channels=2&reference_channel=2", b"reference_channel must be an integer from 0 to 1"),
                        ("?rate=16000&lang=en", b"unknown parameter(s) lang"), ("?rate=", b"rate must be"),
                        ("?max_new_tokens=7", b"at most the server's 6"), ("?prompt=", b"prompt must be non-empty"),
                        ("?system=%20", b"system must be non-empty"), (f"?prompt={'x' * 2001}", b"at most 2000"),
                        ("?prompt=Hear%20%3C%7CAUDIO%7C%3E", b"prompt must not contain <|AUDIO|>")):
        with pytest.raises(InvalidStatus) as bad:
            connect(f"ws://127.0.0.1:{server.port}/{query}")
        assert bad.value.response.status_code == 400 and says in bad.value.response.body
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        ws.send("hello")
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and "binary" in error["message"] and "utterance" not in error
        assert 0 <= error["wall_s"] < 60 and error["audio_s"] == 0.0  # the stream's clock, not the machine's
        ws.send(pcm(SPEECH))
        ws.send(json.dumps({"type": "end"}))
        events = []
        while not events or events[-1]["type"] != "summary":
            events.append(json.loads(ws.recv(timeout=60)))
    assert events[-1]["answers"] == 2


class _Recording:
    """The model, noting the conversation of every answer it streams."""

    def __init__(self, model) -> None:
        self._model, self.conversations = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def stream(self, messages, **kwargs):
        self.conversations.append([(m["role"], m["content"]) for m in messages])
        return self._model.stream(messages, **kwargs)


def test_session_params_override_the_servers_options_per_client(tiny_model):
    """`barge_in`, `max_waiting`, `max_new_tokens`, `system` and `prompt` in the query apply to
    that client only, and `ready` says so; the model gets that client's system message and prompt,
    and its answers keep to its cap."""
    model = _Recording(tiny_model)
    server = Server(model, OPTS, server=ServerOptions(port=0), vad_factory=EnergyVad)
    server.start()
    try:
        query = "?barge_in=1&max_waiting=2&max_new_tokens=2&system=Be+brief.&prompt=Answer%20in%20one%20word%3A"
        with connect(f"ws://127.0.0.1:{server.port}/{query}") as ws:
            ready = json.loads(ws.recv())
        assert ready["barge_in"] is True and ready["max_waiting"] == 2 and ready["max_new_tokens"] == 2
        assert ready["system"] == "Be brief." and ready["prompt"] == "Answer in one word:"
        events = session(server.port, pcm(SPEECH), query="?max_new_tokens=2&system=Be+brief.&prompt=In+French%3A")
        answers = [e["utterance"] for e in events if e["type"] == "answer"]
        assert len(answers) == 2 and all(sum(e["type"] == "token" and e["utterance"] == u for e in events) <= 2
                                         for u in answers)
        assert session(server.port, pcm(SPEECH))[-1]["answers"] == 2  # the next client: the server's own
    finally:
        server.stop()
    mine = [("system", "Be brief."), ("user", "<|AUDIO|>\nIn French:")]
    default = [("system", OPTS.system), ("user", f"<|AUDIO|>\n{OPTS.prompt}")]
    assert model.conversations == [mine, mine, default, default]
    assert SessionParams.parse("/") == SessionParams()
    p = SessionParams.parse("/listen?rate=44100&channels=2&barge_in=0")
    assert (p.rate, p.channels, p.barge_in, p.resume) == (44100, 2, False, None)
    assert SessionParams.parse("/?resume=0").options(OPTS, "<|AUDIO|>").resume_false_interruptions is False
    echo = SessionParams.parse("/?echo_guard=0&half_duplex=1").options(OPTS, "<|AUDIO|>")
    assert (echo.echo_guard, echo.half_duplex) == (False, True)
    assert p.options(OPTS, "<|AUDIO|>") == OPTS and p.options(AssistantOptions(), "<|AUDIO|>").barge_in is False
    with pytest.raises(ValueError, match="channels"):
        SessionParams.parse("/?channels=0")


def test_a_client_reports_its_loudspeaker_playing(server, monkeypatch):
    """`playback` messages reach the listener in order (tests/test_assistant.py tests what it does
    with them); a malformed one gets an error event and the stream goes on."""
    reported = []
    monkeypatch.setattr(Assistant, "playback", lambda self, active: reported.append(active))
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        for active in (True, False):
            ws.send(pcm(SPEECH[:8000]))
            ws.send(json.dumps({"type": "playback", "active": active}))
        ws.send(json.dumps({"type": "playback", "active": "yes"}))
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and '"playback", "active": true|false' in error["message"]
        ws.send(json.dumps({"type": "end"}))
        while (event := json.loads(ws.recv(timeout=60)))["type"] != "summary":
            pass
    assert reported == [True, False] and event["errors"] == 0


def test_health_answers_without_taking_the_client_slot(server):
    """`GET /health` is plain HTTP (curl, a supervisor's probe): 200 and JSON, busy or not, and a
    probe while a client is connected neither refuses nor disturbs that client."""
    from urllib.request import urlopen

    def health() -> dict:
        with urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/json"
            return json.loads(r.read())

    idle = health()
    assert idle["status"] == "ok" and idle["busy"] is False and idle["sessions"] == 0 and idle["backend"] == "torch"
    with connect(f"ws://127.0.0.1:{server.port}/") as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        busy = health()
        assert busy["busy"] is True and busy["sessions"] == 1 and busy["uptime_s"] >= idle["uptime_s"]
        ws.send(pcm(SPEECH))
        ws.send(json.dumps({"type": "end"}))
        events = []
        while not events or events[-1]["type"] != "summary":
            events.append(json.loads(ws.recv(timeout=60)))
    assert events[-1]["answers"] == 2 and events[-1]["ended_by"] == "client"


def test_a_silent_client_is_ended_as_if_it_sent_end(tiny_model):
    """After `idle_timeout_s` without a message the stream ends: what is pending is answered, the
    summary says why, the connection closes and the next client is served."""
    from websockets.exceptions import ConnectionClosedOK

    s = Server(tiny_model, OPTS, server=ServerOptions(port=0, idle_timeout_s=1.0), vad_factory=EnergyVad)
    s.start()
    try:
        with connect(f"ws://127.0.0.1:{s.port}/") as ws:
            assert json.loads(ws.recv())["idle_timeout_s"] == 1.0
            ws.send(pcm(SPEECH))  # then nothing: no `end`
            events = []
            while not events or events[-1]["type"] != "summary":
                events.append(json.loads(ws.recv(timeout=60)))
            with pytest.raises(ConnectionClosedOK):
                ws.recv(timeout=10)
        assert events[-1]["ended_by"] == "idle" and events[-1]["answers"] == 2
        assert session(s.port, pcm(SPEECH))[-1]["answers"] == 2
    finally:
        s.stop()


def test_no_idle_timeout(tiny_model, caplog):
    """idle_timeout_s=0: a client may stay silent; its session ends when it says so."""
    caplog.set_level("INFO", logger="desta_edge.streaming.server")
    s = Server(tiny_model, OPTS, server=ServerOptions(port=0, idle_timeout_s=0), vad_factory=EnergyVad)
    s.start()
    try:
        events = session(s.port, pcm(SPEECH))
    finally:
        s.stop()
    assert events[0]["idle_timeout_s"] == 0 and events[-1]["ended_by"] == "client"
    assert "finished: it sent end" in caplog.text


def test_server_options_are_checked():
    for bad in ({"port": 70000}, {"port": -1}, {"idle_timeout_s": -1.0}, {"idle_timeout_s": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerOptions(**bad)


def test_notify_systemd(tmp_path, monkeypatch):
    """READY=1 reaches the socket systemd names in NOTIFY_SOCKET (a path or an abstract name);
    without one, nothing is sent; a socket nobody listens on is logged, not raised."""
    import socket

    from desta_edge.streaming.server import notify_systemd

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_systemd("READY=1") is False
    for address, env in ((str(tmp_path / "notify"), str(tmp_path / "notify")),
                         (f"\0desta-edge-test-{id(tmp_path)}", f"@desta-edge-test-{id(tmp_path)}")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            sock.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", env)
            assert notify_systemd("READY=1\nSTATUS=serving") is True
            assert sock.recv(1024) == b"READY=1\nSTATUS=serving"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert notify_systemd("READY=1") is False


def test_the_example_client_streams_a_microphone(server, tmp_path):
    """examples/ws_client.py --mic through a real capture stack (PortAudio opening ALSA's file
    plugin fed at real-time pace, see virtual_mic.py) to the server: both requests answered, at
    the times the one-process listener finds them."""
    import subprocess
    import sys
    from pathlib import Path

    from virtual_mic import DEVICE, VirtualMic, available

    if available() is not None:
        pytest.skip(f"no virtual microphone: {available()}")
    client = Path(__file__).resolve().parents[1] / "examples" / "ws_client.py"
    with VirtualMic(tmp_path) as mic:
        mic.play(SPEECH)
        r = subprocess.run([sys.executable, str(client), "--mic", DEVICE, "--seconds", str(len(SPEECH) / 16000 + 1),
                            "--url", f"ws://127.0.0.1:{server.port}"], env=mic.env, capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "ready" and events[0]["rate"] == 16000 and events[0]["barge_in"] is False
    assert events[-1]["type"] == "summary" and events[-1]["answers"] == 2 and events[-1]["ended_by"] == "client"
    ends = [e["speech_end_s"] for e in events if e["type"] == "speech_end"]
    assert ends == pytest.approx([1.3, 2.9], abs=0.1)


def test_the_example_client_streams_a_file(server, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import soundfile as sf

    path = tmp_path / "speech.wav"
    sf.write(str(path), np.repeat(SPEECH[:, None], 2, axis=1), 16000)  # stereo: sent as it is, mixed by the server
    client = Path(__file__).resolve().parents[1] / "examples" / "ws_client.py"
    r = subprocess.run([sys.executable, str(client), str(path), "--fast", "--prompt", "Be brief.",
                        "--url", f"ws://127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["channels"] == 2 and events[0]["prompt"] == "Be brief." and events[0]["barge_in"] is False
    assert events[-1]["answers"] == 2

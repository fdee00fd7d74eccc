"""`desta-edge listen` end to end on the real tiny backbones: a noisy multi-question recording
(two synthesizers, six voices, 20 dB noise + hum) from a file, and raw PCM on stdin; also the
daemons, `serve` and `api`, and what a systemd service sees of them."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.request import Request, urlopen

import numpy as np
import pytest
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from recording import build  # noqa: E402

from desta_edge.cli import main  # noqa: E402
from desta_edge.training.metrics import word_error_rate  # noqa: E402

pytestmark = pytest.mark.slow


def listen(*args: str, stdin: bytes | None = None) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "desta_edge", "listen", "--json", "--max-new-tokens", "8", *args],
                       input=stdin, capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def test_noisy_multi_question_recording_is_segmented_and_answered(tmp_path):
    wav = tmp_path / "rec.wav"
    truth = build(wav)
    events = listen("--source", str(wav), "--fast")
    assert events[0]["type"] == "ready" and events[0]["warm_up_ms"] > 0  # warmed up before the first audio
    assert events[-1]["type"] == "summary" and events[-1]["errors"] == events[-1]["vad_errors"] == 0
    # 20 dB noise: the gates engage for a few frames at most (16 of about 1,900 when written)
    assert events[-1]["noise_gated_frames"] + events[-1]["talker_gated_frames"] < 100
    ends = [e for e in events if e["type"] == "speech_end"]
    answers = [e for e in events if e["type"] == "answer"]
    assert len(ends) == len(answers) == len(truth)  # every question once: none split, none merged, none missed
    for end, u in zip(ends, truth):
        assert abs(end["speech_end_s"] - u.end_s) < 0.3, (end, u)
    wer = word_error_rate([(u.text, a["transcript"]) for u, a in zip(truth, answers)])
    assert wer <= 0.2, [(u.text, a["transcript"]) for u, a in zip(truth, answers)]
    for e in events[:-1]:
        assert {"type", "audio_s", "wall_s"} <= set(e) and isinstance(e.get("utterance", 0), int)
    first = {e["utterance"] for e in events if e["type"] == "token"}
    assert first == {a["utterance"] for a in answers if a["text"]}


def test_stdin_pcm_at_another_rate_and_channel_count(tmp_path):
    subprocess.run(["flite", "-voice", "slt", "-t", "What is the capital of France?", "-o", str(tmp_path / "q.wav")], check=True)
    x, sr = sf.read(str(tmp_path / "q.wav"), dtype="float32")
    x = soxr.resample(x, sr, 22050)
    pad = np.zeros(22050, dtype=np.float32)
    x = np.concatenate([pad, x, pad, pad])
    pcm = (np.stack([x, x], axis=1) * 32767).astype("<i2").tobytes()
    events = listen("--source", "-", "--rate", "22050", "--channels", "2", stdin=pcm)
    answers = [e for e in events if e["type"] == "answer"]
    assert len(answers) == 1 and "france" in answers[0]["transcript"].lower()


def test_the_loudspeakers_echo_is_no_request_once_cancelled(tmp_path, capsys):
    """A spoken answer played through a loudspeaker between two questions: heard from the
    microphone alone it becomes an utterance of its own; with what the loudspeaker played as a
    second channel (`--reference-channel 1`), its echo is cancelled, and only the two questions
    are heard and answered."""
    pytest.importorskip("livekit")
    from desta_edge.training import acoustics

    def say(engine_voice, text):
        engine, voice = engine_voice
        path = tmp_path / f"{voice}.wav"
        cmd = (["flite", "-voice", voice, "-t", text, "-o", str(path)] if engine == "flite"
               else ["espeak-ng", "-v", voice, "-w", str(path), text])
        subprocess.run(cmd, check=True)
        x, sr = sf.read(str(path), dtype="float32")
        return soxr.resample(x, sr, 16000).astype(np.float32)

    rng = np.random.default_rng(0)
    q1 = acoustics.set_level(say(("flite", "slt"), "What is the capital of France?"), -26)
    played = acoustics.set_level(say(("espeak", "en-gb"), "The capital of France is Paris, a city on the river Seine."), -20)
    q2 = acoustics.set_level(say(("flite", "awb"), "How many days are there in a week?"), -26)
    echo = acoustics.band_limit(played, 200.0, 7000.0)
    echo = acoustics.convolve(np.tanh(1.5 * echo / np.abs(echo).max()), acoustics.room_response(0.4, 4.0, rng))
    echo = acoustics.set_level(echo, -30)
    gap = np.zeros(16000, np.float32)
    mic = np.concatenate([gap / 2, q1, gap, np.zeros(640, np.float32), echo, gap, q2, gap, gap / 2])
    ref = np.concatenate([gap / 2, 0 * q1, gap, played, np.zeros(640, np.float32), gap, 0 * q2, gap, gap / 2])
    mic += 10 ** (-65 / 20) * acoustics.room_tone(len(mic), rng)
    sf.write(tmp_path / "mic.wav", mic, 16000, subtype="PCM_16")
    sf.write(tmp_path / "both.wav", np.stack([mic, ref], axis=1), 16000, subtype="PCM_16")
    heard = listen("--source", str(tmp_path / "mic.wav"), "--fast")
    assert len([e for e in heard if e["type"] == "speech_end"]) == 3  # the echo too
    events = listen("--source", str(tmp_path / "both.wav"), "--fast", "--reference-channel", "1")
    answers = [e for e in events if e["type"] == "answer"]
    assert len([e for e in events if e["type"] == "speech_end"]) == len(answers) == 2
    assert "france" in answers[0]["transcript"].lower() and "week" in answers[1]["transcript"].lower()
    assert main(["listen", "--source", str(tmp_path / "mic.wav"), "--reference-channel", "1"]) == 2
    assert "reference channel 1 must be one of its 1 channels" in capsys.readouterr().err


def test_serve_answers_a_websocket_client(tmp_path):
    """`desta-edge serve` on the real tiny preset: a client streams the example question as 44.1 kHz
    PCM and gets the `ready`, the answer and the `summary`. As a systemd service would see it: READY=1 once listening, /health, and on SIGTERM STOPPING=1
    and a clean exit."""
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    x, sr = sf.read(Path(__file__).resolve().parents[1] / "examples" / "what_is_the_capital_of_france.wav",
                    dtype="float32")
    x = soxr.resample(np.concatenate([np.zeros(sr // 2, np.float32), x, np.zeros(sr, np.float32)]), sr, 44100)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    proc = subprocess.Popen([sys.executable, "-m", "desta_edge", "serve", "--port", "0", "--max-new-tokens", "8"],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        for line in proc.stderr:  # "serving on ws://127.0.0.1:PORT/..." once the model is warm
            if line.startswith("serving on "):
                url = line.split()[2].split("/?")[0]
                break
        else:
            pytest.fail(f"serve exited with {proc.wait()} before listening")
        assert notify.recv(1024).decode().startswith("READY=1\nSTATUS=serving on ws://127.0.0.1:")
        with urlopen(url.replace("ws://", "http://") + "/health", timeout=30) as r:
            assert json.loads(r.read())["busy"] is False
        with connect(f"{url}/?rate=44100") as ws:
            ws.send((x * 32767).astype("<i2").tobytes())
            ws.send(json.dumps({"type": "end"}))
            events = []
            while not events or events[-1]["type"] != "summary":
                events.append(json.loads(ws.recv(timeout=300)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and "served 1 session(s)" in proc.stderr.read()
        assert notify.recv(1024) == b"STOPPING=1"
    finally:
        proc.kill()
        proc.wait(30)
        notify.close()
    assert events[0]["type"] == "ready" and events[0]["rate"] == 44100 and events[0]["warm_up_ms"] > 0
    (answer,) = [e for e in events if e["type"] == "answer"]
    assert "france" in answer["transcript"].lower() and answer["text"].strip()
    assert events[-1]["answers"] == 1 and events[-1]["errors"] == 0


def test_display_shows_latency_only_when_audio_is_live(capsys):
    from desta_edge.streaming.cli import _Display

    answer = {"type": "answer", "utterance": 0, "audio_s": 2.0, "wall_s": 0.1, "text": "Paris.", "transcript": "Hi",
              "timings_ms": {"endpoint_wait": 500.0, "features": 5.0, "encoder": 240.0, "asr": 110.0,
                             "prefill": 90.0, "first_token": 620.0, "total": 900.0}}
    _Display(live=True)(answer)
    assert "first token 620 ms after you stopped; endpoint wait 500 ms)" in capsys.readouterr().err
    live = _Display(live=True)
    live({"type": "speech_end", "utterance": 0, "audio_s": 2.0, "wall_s": 0.1, "speech_end_s": 1.8,
          "reason": "turn_complete"})
    live(answer)
    assert "endpoint wait 500 ms, a finished request)" in capsys.readouterr().err
    _Display(live=False)(answer)  # --fast: the file runs ahead of the clock
    err = capsys.readouterr().err
    assert "compute: encoder 240 ms, ASR 110 ms, prefill 90 ms" in err and "after you stopped" not in err
    _Display()({"type": "skipped", "utterance": 3, "audio_s": 12.5, "wall_s": 14.0, "waiting": 1})
    assert "request 3 skipped unanswered: newer requests were waiting (--max-waiting 1)" in capsys.readouterr().err


def test_display_and_flags_of_a_false_interruption(capsys):
    from desta_edge.cli import _parser
    from desta_edge.streaming.cli import _Display, _options

    show = _Display()
    show({"type": "cancelled", "utterance": 0, "audio_s": 3.0, "wall_s": 3.1, "text": "The capital of"})
    show({"type": "discarded", "utterance": 1, "audio_s": 4.0, "wall_s": 4.1, "reason": "backchannel",
          "transcript": " Mm-hmm."})
    show({"type": "resumed", "utterance": 0, "audio_s": 4.0, "wall_s": 4.1, "text": "The capital of",
          "interruption": 1})
    out = capsys.readouterr().out
    assert " [interrupted]\nyou: Mm-hmm. (a backchannel, not a request)\nassistant (going on): The capital of" in out
    show({"type": "discarded", "utterance": 2, "audio_s": 6.0, "wall_s": 6.1, "reason": "short", "voiced_ms": 180})
    show({"type": "discarded", "utterance": 3, "audio_s": 9.0, "wall_s": 9.1, "reason": "distant", "voiced_ms": 900})
    err = capsys.readouterr().err
    assert "(ignored: 180 ms of speech, too short for a request)" in err
    assert "(ignored: background speech, far under the talker)" in err
    show({"type": "discarded", "utterance": 4, "audio_s": 12.0, "wall_s": 12.1, "reason": "filler", "transcript": " "})
    assert "you: (no words) (a filler, not a request)" in capsys.readouterr().out
    for argv, resume in ((["listen"], True), (["listen", "--no-resume"], False), (["serve", "--no-resume"], False)):
        _, opts = _options(_parser().parse_args(argv), live=True, fast_file=False)
        assert opts.resume_false_interruptions is resume and opts.barge_in is True and opts.drop_fillers is True
    _, opts = _options(_parser().parse_args(["listen", "--answer-fillers"]), live=True, fast_file=False)
    assert opts.drop_fillers is False and opts.talker_hears_answers is True
    _, opts = _options(_parser().parse_args(["listen", "--source", "x.wav"]), live=False, fast_file=False)
    assert opts.talker_hears_answers is False and opts.barge_in is False  # a recording
    _, opts = _options(_parser().parse_args(["listen", "--source", "-", "--barge-in"]), live=False, fast_file=False)
    assert opts.talker_hears_answers is True and opts.barge_in is True  # a live stream on stdin
    show({"type": "discarded", "utterance": 5, "audio_s": 15.0, "wall_s": 15.1, "reason": "echo", "echo_of": 4,
          "transcript": " The capital of France is Paris."})
    assert "you: The capital of France is Paris. (the echo of an answer, not a request)" in capsys.readouterr().out
    _, opts = _options(_parser().parse_args(["serve"]), live=True, fast_file=False)
    assert (opts.echo_guard, opts.half_duplex, opts.echo_tail_ms) == (True, False, 500)
    argv = ["serve", "--half-duplex", "--no-echo-guard", "--echo-tail-ms", "800"]
    _, opts = _options(_parser().parse_args(argv), live=True, fast_file=False)
    assert (opts.echo_guard, opts.half_duplex, opts.echo_tail_ms) == (False, True, 800)


def test_api_answers_an_openai_style_request():
    """`desta-edge api` on the real tiny preset: the example question sent as a base64 WAV part of
    a chat completion is transcribed and answered; SIGTERM ends the server cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "desta_edge", "api", "--port", "0", "--max-new-tokens", "16"],
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # "serving 'tiny' on http://127.0.0.1:PORT/v1/chat/completions ..."
            if line.startswith("serving "):
                url = line.split()[3]
                break
        else:
            pytest.fail(f"api exited with {proc.wait()} before listening")
        audio = base64.b64encode((Path(__file__).resolve().parents[1] / "examples" /
                                  "what_is_the_capital_of_france.wav").read_bytes()).decode()
        body = {"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]}
        request = Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urlopen(request, timeout=300) as r:
            out = json.loads(r.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and "answered 1 request(s)" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(30)
    assert "france" in out["desta"]["transcripts"][0]["text"].lower()
    assert out["choices"][0]["message"]["content"].strip() and out["usage"]["completion_tokens"] > 0


def test_listen_tells_systemd_it_is_ready_and_stops_cleanly_on_sigterm(tmp_path):
    """As a service: READY=1 once warm and listening (here on stdin, held open), and SIGTERM ends
    it as Ctrl-C does, with the summary and exit 0."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(120)
    proc = subprocess.Popen([sys.executable, "-m", "desta_edge", "listen", "--source", "-", "--json"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        assert notify.recv(1024) == b"READY=1\nSTATUS=listening (-)"
        proc.stdin.write("\0" * 32000)  # a second of silence
        proc.stdin.flush()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        notify.close()
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "ready" and events[-1]["type"] == "summary" and events[-1]["utterances"] == 0

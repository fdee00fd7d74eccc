"""CLI behaviour: bad input gives a clear message and exit code 2 (no model needed), and `ask` on
several files (the tiny random checkpoint).

The checks run `desta_edge.cli.main` in this process (a subprocess would spend seconds importing
torch for each); an exception escaping `main` fails the test as a traceback would. One test runs
the real entry point, `python -m desta_edge`, in a process of its own.
"""

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import tone
from desta_edge.cli import main
from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "what_is_the_capital_of_france.wav"


def run(capsys, *args: str) -> SimpleNamespace:
    """`desta-edge ARGS` in this process: its exit code, stdout and stderr."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_bad_audio_is_reported_without_a_traceback(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEjunk")
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    long = tmp_path / "long.wav"
    sf.write(str(long), np.zeros(8000 * 31, dtype=np.int16), 8000)
    cases = {tmp_path / "missing.wav": "not found", corrupt: "cannot decode", nan: "non-finite", long: "31.000 s long"}
    for path, message in cases.items():
        r = run(capsys, "ask", str(path), "--json")
        assert r.returncode == 2, (path, r.stderr)
        assert message in r.stderr
        assert r.stdout == ""


def test_usage_errors(capsys):
    r = run(capsys, "ask", "x.wav", "--max-new-tokens", "0")
    assert r.returncode == 2 and "--max-new-tokens" in r.stderr
    r = run(capsys, "ask", "x.wav", "y.wav", "--batch-size", "0")
    assert r.returncode == 2 and "--batch-size" in r.stderr
    r = run(capsys, "ask", "x.wav", "-")
    assert r.returncode == 2 and "stdin" in r.stderr
    assert run(capsys, "ask").returncode == 2  # no audio named
    r = subprocess.run([sys.executable, "-m", "desta_edge"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "usage: desta-edge" in r.stdout and "Traceback" not in r.stderr


def test_ask_checks_audio_from_stdin_like_a_file(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(EXAMPLE.read_bytes()[:3000])))
    r = run(capsys, "ask", "-")
    assert r.returncode == 2 and "error: stdin: the file is cut short" in r.stderr


def test_listen_reports_a_bad_file_and_bad_options(capsys):
    r = run(capsys, "listen", "--source", "/nonexistent.wav", "--json")
    assert r.returncode == 2 and "not found" in r.stderr
    for option, value, field in [("--talker-drop-db", "-3", "talker_drop_db"), ("--silero-threshold", "0.1",
                                 "silero_threshold"), ("--max-waiting", "-1", "max_waiting")]:
        r = run(capsys, "listen", "--source", "/nonexistent.wav", option, value)
        assert r.returncode == 2 and field in r.stderr, (option, r.stderr)


def test_serve_checks_its_options_before_the_model_loads(capsys):
    r = run(capsys, "serve", "--max-waiting", "-1")
    assert r.returncode == 2 and "max_waiting" in r.stderr


def test_ask_answers_several_files_in_order_in_batches(tiny_checkpoint, tmp_path, capsys):
    """Each file gets one JSON line, in the order given, with the answer it gets alone; an unreadable
    file gets an error line and the others are still answered (exit code 2)."""
    from desta_edge import DestaModel

    files = []
    for i, seconds in enumerate([0.6, 1.3, 0.9]):
        files.append(tmp_path / f"q{i}.wav")
        sf.write(str(files[-1]), tone(seconds, freq=220.0 * (i + 1)), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    files.insert(1, bad)
    r = run(capsys, "ask", *map(str, files), "--model", str(tiny_checkpoint), "--device", "cpu", "--json",
            "--batch-size", "2", "--max-new-tokens", "4")
    assert r.returncode == 2, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["audio"] for line in lines] == [str(f) for f in files]
    assert "cannot decode" in lines[1]["error"] and f"error: {bad}: " in r.stderr
    # the file before the bad one is answered on its own, the two after it together
    assert [line["timings_ms"]["batch_size"] for line in lines if "answer" in line] == [1, 2, 2]
    model = DestaModel.from_pretrained(tiny_checkpoint, device="cpu")
    for path, line in zip(files, lines):
        if path == bad:
            continue
        alone = model.generate([{"role": "system", "content": ASSISTANT_SYSTEM},
                                {"role": "user", "content": f"<|AUDIO|>\n{ASSISTANT_PROMPT}",
                                 "audios": [{"audio": str(path), "text": None}]}], max_new_tokens=4)
        assert (line["transcript"], line["answer"]) == (alone.audios[0][1], alone.text[0])


def test_ask_on_several_unreadable_files_loads_no_model(tmp_path, capsys):
    missing = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    r = run(capsys, "ask", *missing, "--model", str(tmp_path / "no-such-model"), "--json")
    assert r.returncode == 2
    assert [json.loads(line)["audio"] for line in r.stdout.splitlines()] == missing
    assert "not found" in r.stdout and "no-such-model" not in r.stderr


def test_ask_answers_a_failing_batch_file_by_file(tiny_checkpoint, tmp_path, capsys, caplog, monkeypatch):
    """A conversation the model refuses (here: any batch holding the file named refused.wav) fails
    the batch; its files are then answered one by one, so only that one gets an error."""
    from desta_edge import DestaModel

    generate = DestaModel.generate

    def refusing(self, messages, **kw):
        batch = messages if isinstance(messages[0], list) else [messages]
        if any(m.get("audios") and m["audios"][0]["audio"].source.endswith("refused.wav") for c in batch for m in c):
            raise ValueError("refused for the test")
        return generate(self, messages, **kw)

    monkeypatch.setattr(DestaModel, "generate", refusing)
    files = [tmp_path / name for name in ("a.wav", "refused.wav", "b.wav")]
    for i, path in enumerate(files):
        sf.write(str(path), tone(0.5 + 0.2 * i), 16000)
    r = run(capsys, "ask", *map(str, files), "--model", str(tiny_checkpoint), "--device", "cpu", "--json",
            "--max-new-tokens", "2")
    assert r.returncode == 2
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["audio"] for line in lines] == [str(f) for f in files]
    assert lines[1] == {"audio": str(files[1]), "error": "refused for the test"}
    assert [lines[0]["timings_ms"]["batch_size"], lines[2]["timings_ms"]["batch_size"]] == [1, 1]
    assert "a batch of 3 failed" in caplog.text


def test_ask_says_plainly_when_a_clip_has_no_speech(tiny_checkpoint, tmp_path, capsys):
    """A clip without speech (a tone) gets the reference's blank transcript; a person is told so in
    words, once alone and once among several files, and --json keeps the transcript as it is."""
    files = [tmp_path / "tone1.wav", tmp_path / "tone2.wav"]
    for i, path in enumerate(files):
        sf.write(str(path), tone(0.8, freq=300.0 * (i + 1)), 16000)
    common = ("--model", str(tiny_checkpoint), "--device", "cpu", "--max-new-tokens", "2")
    alone = run(capsys, "ask", str(files[0]), *common)
    assert alone.returncode == 0 and "heard: (no speech; the answer is about the sound)" in alone.stderr
    several = run(capsys, "ask", *map(str, files), *common)
    assert several.returncode == 0 and several.stdout.count("heard: (no speech") == 2
    js = run(capsys, "ask", str(files[0]), *common, "--json")
    assert json.loads(js.stdout.splitlines()[-1])["transcript"] == " "

"""CLI behaviour that needs no model: bad input gives a clear message and exit code 2.

The checks run `desta_edge.cli.main` in this process (a subprocess would spend seconds importing
torch for each); an exception escaping `main` fails the test as a traceback would. One test runs
the real entry point, `python -m desta_edge`, in a process of its own.
"""

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from desta_edge.cli import main

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

"""CLI behaviour that needs no model: bad input gives a clear message and exit code 2."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def run(*args):
    return subprocess.run([sys.executable, "-m", "desta_edge", *args], capture_output=True, text=True, timeout=120)


def test_bad_audio_is_reported_without_a_traceback(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEjunk")
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    long = tmp_path / "long.wav"
    sf.write(str(long), np.zeros(8000 * 31, dtype=np.int16), 8000)
    cases = {tmp_path / "missing.wav": "not found", corrupt: "cannot decode", nan: "non-finite", long: "31.000 s long"}
    for path, message in cases.items():
        r = run("ask", str(path), "--json")
        assert r.returncode == 2, (path, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == ""


def test_usage_errors():
    assert run().returncode == 2
    r = run("ask", "x.wav", "--max-new-tokens", "0")
    assert r.returncode == 2 and "--max-new-tokens" in r.stderr



def test_ask_checks_audio_from_stdin_like_a_file():
    example = Path(__file__).resolve().parents[1] / "examples" / "what_is_the_capital_of_france.wav"
    r = subprocess.run([sys.executable, "-m", "desta_edge", "ask", "-"], input=example.read_bytes()[:3000],
                       capture_output=True, timeout=120)
    assert r.returncode == 2 and b"error: stdin: the file is cut short" in r.stderr and b"Traceback" not in r.stderr

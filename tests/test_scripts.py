"""The shell scripts in scripts/: they parse, and what they name exists (they run outside CI)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_arm64_check_names_tests_and_an_example_that_exist():
    text = (ROOT / "scripts" / "check_arm64.sh").read_text()
    named = set(re.findall(r"\b(?:tests|examples)/[\w./-]+\.(?:py|wav)\b", text))
    assert {"tests/test_echo.py", "examples/what_is_the_capital_of_france.wav"} <= named
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"scripts/check_arm64.sh names files that do not exist: {missing}"

"""benchmarks/robustness.py: each condition does what it says to the recording and its file, and a run's table."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import load_benchmark

RATE = 16000


def test_conditions_change_the_audio_and_write_the_stated_files(tmp_path):
    bench = load_benchmark("robustness")
    from desta_edge.training.acoustics import active_rms_dbfs

    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    speech = [bench.set_level((np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32), -26)
              for _ in range(4)]
    clean, truth = bench.recording("clean", speech, np.random.default_rng(1))
    assert len(truth) == 4 and all(b - a == pytest.approx(1.0) for a, b in truth)
    quiet, _ = bench.recording("quiet", speech, np.random.default_rng(1))
    np.testing.assert_allclose(quiet, clean * 10 ** (-30 / 20), rtol=1e-5, atol=1e-9)  # the same layout, 30 dB down
    clipped, _ = bench.recording("clipped", speech, rng)
    assert np.abs(clipped).max() == 1.0 and np.mean(np.abs(clipped) == 1.0) > 0.1
    dc, _ = bench.recording("dc-offset", speech, rng)
    assert abs(float(dc.mean()) - 0.3) < 0.01
    far, _ = bench.recording("far", speech, rng)
    assert -44 < active_rms_dbfs(far) < -36  # set to -38 dBFS before the brown noise
    long, later = bench.recording("long-silence", speech, rng)
    assert later[2][0] - later[1][1] > bench.LONG_SILENCE_S and len(long) / RATE > later[-1][1]
    with pytest.raises(ValueError, match="unknown condition"):
        bench.recording("underwater", speech, rng)
    for condition, (ext, rate, channels, _) in bench.FORMATS.items():
        path = bench.write(tmp_path / condition, clean, condition)
        info = sf.info(str(path))
        assert path.suffix == "." + ext and (info.samplerate, info.channels) == (rate, channels), condition
        heard = bench.read_back(path)  # listen's own file source: 16 kHz mono whatever was written
        assert heard.ndim == 1 and abs(len(heard) - len(clean)) < 0.1 * RATE, condition


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_robustness_benchmark_writes_its_table(tmp_path):
    bench = load_benchmark("robustness")
    out = tmp_path / "results"
    assert bench.main(["--conditions", "clean,ulaw-8k-phone,mp3-22k", "--seeds", "1", "--out", str(out)]) == 0
    result = json.loads(next(out.glob("robustness-*.json")).read_text())
    assert result["requests"] == 10 and [r["condition"] for r in result["rows"]] == ["clean", "ulaw-8k-phone", "mp3-22k"]
    for r in result["rows"]:
        assert r["once"] + r["split"] + r["missed"] == 10 and r["error"] is None
    assert result["rows"][0]["once"] == 10  # the clean recording: every question found once
    table = next(out.glob("robustness-*.md")).read_text()
    assert "| mp3-22k | mp3, 22050 Hz, 1 ch |" in table
    with pytest.raises(SystemExit):
        bench.main(["--conditions", "underwater", "--out", str(out)])

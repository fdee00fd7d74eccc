"""benchmarks/endpointing.py: backgrounds at a known SNR, and the table over a real run (one layout)."""

import json
import shutil

import numpy as np
import pytest

from conftest import load_benchmark


def test_backgrounds_are_finite_and_colored_noise_tilts_low():
    bench = load_benchmark("endpointing")
    rng = np.random.default_rng(0)
    talkers = [np.sin(np.arange(8000) / 8.0).astype(np.float32)]
    n = 32000
    spectra = {}
    for kind in bench.NOISES:
        x = bench.background(kind, n, rng, talkers)
        assert x.shape == (n,) and x.dtype == np.float32 and np.isfinite(x).all() and np.std(x) > 0, kind
        power = np.abs(np.fft.rfft(x)) ** 2
        spectra[kind] = power[: len(power) // 8].sum() / power.sum()  # share below 1 kHz
    assert spectra["white"] < 0.2 < spectra["pink"] < spectra["brown"]
    # one background talker: sentence after sentence, each followed by a 0.2-0.8 s pause
    x = bench.background("talker", 10 * n, np.random.default_rng(1), talkers)
    pauses = np.diff(np.flatnonzero(np.diff(np.r_[0, x == 0, 0])))[::2] / bench.RATE  # silent stretches, s
    pauses = pauses[pauses > 0.01][1:-1]  # the first and the last may be cut by the window
    assert len(pauses) >= 5 and pauses.min() >= 0.2 - 1e-3 and pauses.max() <= 0.8
    with pytest.raises(ValueError, match="unknown background"):
        bench.background("rain", n, rng, talkers)
    for kind in ("typing", "clatter"):  # impulsive: loud peaks far over their mean power, and quiet between
        x = bench.background(kind, 10 * n, np.random.default_rng(2), talkers)
        frames = np.sqrt(np.mean(x[: len(x) // 320 * 320].reshape(-1, 320) ** 2, axis=1))  # 20 ms RMS
        assert np.abs(x).max() > 10 * np.sqrt(np.mean(x**2)), kind
        assert np.mean(frames < 0.01 * frames.max()) > 0.3, kind


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")
@pytest.mark.parametrize("kind", ["typing", "clatter"])
def test_requests_over_typing_or_clatter_are_found_once(tmp_path, kind):
    """Three spoken requests with someone typing, or dishes clattering, before, between and after
    them, 5 dB under the speech: webrtcvad alone hears the clicks as speech and runs requests
    together; the default endpointer (Silero, with the gates) finds each request exactly once."""
    from conftest import said

    bench = load_benchmark("endpointing")
    requests = [said(text, tmp_path / f"q{i}.wav", voice=voice) for i, (text, voice) in enumerate([
        ("Please turn on the lights.", "en-us"), ("What time is it now?", "en+f3"),
        ("Set a timer for five minutes.", "en-gb+m3")])]
    rng = np.random.default_rng(0)
    clean, truth = bench.layout(requests, rng)
    noise = bench.background(kind, len(clean), rng, [])
    mix = clean + noise * np.sqrt(np.mean(np.concatenate(requests) ** 2) / np.mean(noise**2) / 10 ** 0.5)
    mix /= max(1.0, float(np.abs(mix).max()))
    webrtc_only = bench.EndpointOptions(detector="webrtcvad", noise_gate_db=0, talker_drop_db=0, loud_drop_db=0,
                                        distant_db=0)
    assert bench.segment(mix, truth, webrtc_only)["merged"] > 0
    assert bench.segment(mix, truth, bench.EndpointOptions()) == {
        "once": 3, "split": 0, "missed": 0, "merged": 0, "no_question": 0, "max_length": 0}


def test_segment_scores_found_split_missed_and_merged():
    bench = load_benchmark("endpointing")
    from desta_edge.streaming.vad import SpeechEnd

    class Script:  # stands in for the endpointer: replays fixed utterances
        def __init__(self, spans):
            self.spans = spans

        def __call__(self, opts):
            return self

        def push(self, x):
            return []

        def flush(self):
            return [SpeechEnd(i, b, b, a, np.zeros(1, np.float32), "silence") for i, (a, b) in enumerate(self.spans)]

    truth = [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0)]
    spans = [(0.7, 2.1), (2.9, 3.4), (3.6, 4.1), (4.9, 8.1), (9.0, 9.5)]
    original = bench.Endpointer
    bench.Endpointer = Script(spans)
    try:
        got = bench.segment(np.zeros(320, np.float32), truth, bench.EndpointOptions())
    finally:
        bench.Endpointer = original
    assert got == {"once": 3, "split": 1, "missed": 0, "merged": 1, "no_question": 1, "max_length": 0}


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_endpointing_benchmark_writes_its_table(tmp_path):
    bench = load_benchmark("endpointing")
    out = tmp_path / "results"
    assert bench.main(["--noises", "white,babble", "--snrs", "20", "--seeds", "1", "--talker-drop-db", "10",
                       "--spectral-gate", "5:0", "--faint-range-db", "0", "--variant", "loud_drop_db=0,distant_db=0",
                       "--out", str(out), "--json"]) == 0
    (result_file,) = out.glob("endpointing-*.json")
    result = json.loads(result_file.read_text())
    assert result["questions"] == 10 and len(result["rows"]) == 16  # 2 backgrounds x 8 endpointers
    for r in result["rows"]:
        assert r["once"] + r["split"] + r["missed"] == 10
    white_plain = next(r for r in result["rows"] if r["background"] == "white" and r["variant"] == "webrtcvad only")
    assert white_plain["once"] == 10  # light white noise: webrtcvad alone finds every question
    table = next(out.glob("endpointing-*.md")).read_text()
    assert "| babble | 20 | with the noise gate |" in table and "| babble | 20 | noise gate + talker gate 10 dB |" in table
    assert "| white | 20 | spectral gate 5 dB | 10/10 |" in table
    assert "| babble | 20 | default, faint-background rule off |" in table
    assert "| babble | 20 | default with loud_drop_db=0, distant_db=0 |" in table
    assert "| white | 20 | default (Silero with the gates) | 10/10 |" in table
    assert "| white | 20 | webrtcvad with the default gates | 10/10 |" in table
    hangover = bench.EndpointOptions().hangover_ms
    assert result["hangover_ms"] == hangover and f"hangover {hangover} ms" in table
    with pytest.raises(SystemExit):
        bench.main(["--spectral-gate", "5", "--out", str(out)])  # S:N pairs only
    with pytest.raises(SystemExit):
        bench.main(["--hangover-ms", "100", "--out", str(out)])  # shorter than the 150 ms pause
    for bad in ("loud_db=0", "distant_db", "distant_db=-1", "frame_ms=25", "detector=rnnoise"):  # unknown, no value, bad
        with pytest.raises(SystemExit):
            bench.main(["--variant", bad, "--out", str(out)])
    assert bench.variant_fields("frame_ms=30,distant_db=12.5,detector=webrtcvad", bench.EndpointOptions()) == {
        "frame_ms": 30, "distant_db": 12.5, "detector": "webrtcvad"}


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_endpointing_benchmark_on_the_recordings_of_a_manifest(tmp_path):
    bench = load_benchmark("endpointing")
    import soundfile as sf

    rows = []
    for i, (text, engine, voice) in enumerate(bench.QUESTIONS[:3]):
        x = bench._speak(text, engine, voice, tmp_path / f"q{i}.wav") * (0.02 if i == 0 else 0.5)
        sf.write(tmp_path / f"r{i}.wav", x, bench.RATE)
        rows.append({"audio": f"r{i}.wav"})
    rows.append({"audio": "r1.wav", "start_s": 0.0, "end_s": 0.5})  # a segment: not a whole request, left out
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recording = load_benchmark("recording")
    requests = recording.recorded_requests(manifest)
    assert len(requests) == 3 and [t for t, _, _ in requests] == ["", "", ""]  # no transcripts stated
    from desta_edge.training.acoustics import active_rms_dbfs, active_span_s
    assert [round(active_rms_dbfs(x)) for _, _, x in requests] == [recording.RECORDED_LEVEL_DBFS] * 3  # one level
    # each cut to its active span: the synthesizer's own silence around it is gone
    assert all(abs(active_span_s(x) - len(x) / bench.RATE) < 0.05 for _, _, x in requests)
    result = bench.run(["white"], [20.0], 1, recordings=manifest)
    assert result["questions"] == 3 and "3 recordings of people" in result["requests"]
    assert all(r["once"] == 3 for r in result["rows"])  # light white noise: each request found once

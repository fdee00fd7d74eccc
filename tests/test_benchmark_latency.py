"""benchmarks/latency.py's reference-style pipeline: two encoder passes, the same answer."""

import numpy as np

from conftest import load_benchmark


def test_two_pass_backend_encodes_twice_and_keeps_the_connector_output(tiny_model):
    """The reference-style pipeline pays for the second encoder pass but answers from the first
    pass's audio embeddings, so its answers equal desta-edge's one-pass answers."""
    bench = load_benchmark("latency")
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    conv = [{"role": "user", "content": "<|AUDIO|>\nWhat do you hear?", "audios": [{"audio": (clip, 16000), "text": None}]}]
    assert tiny_model.audio_features and tiny_model.connector is not None
    one_pass = tiny_model.generate(conv, max_new_tokens=6)

    inner = tiny_model.backend
    calls = []
    original = inner.encode
    inner.encode = lambda features, *, with_connector: calls.append(with_connector) or original(
        features, with_connector=with_connector)
    tiny_model.backend = bench.TwoPassBackend(inner)
    tiny_model.use_prefix_cache = False
    try:
        two_pass = tiny_model.generate(conv, max_new_tokens=6)
    finally:
        tiny_model.backend = inner
        tiny_model.use_prefix_cache = True
        del inner.encode
    assert calls == [True, False]  # the connector's pass, then whisper.generate's own
    assert two_pass.generated_ids == one_pass.generated_ids and two_pass.audios == one_pass.audios


def test_recording_from_given_requests_knows_their_boundaries(tmp_path):
    """latency.py --recordings: the requests are laid out as given, and the truth says where each is."""
    import soundfile as sf

    recording = load_benchmark("recording")
    t = np.arange(8000) / 16000
    a = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    b = (0.3 * np.sin(2 * np.pi * 120 * t[:4000])).astype(np.float32)
    truth = recording.build(tmp_path / "r.wav", requests=[("front center", "alsa", a), ("", "call", b)], snr_db=40.0)
    assert [u.text for u in truth] == ["front center", ""] and [u.voice for u in truth] == ["alsa", "call"]
    assert [round(u.end_s - u.start_s, 3) for u in truth] == [0.5, 0.25]
    x, sr = sf.read(tmp_path / "r.wav", dtype="float32")
    assert sr == 16000 and 1.2 <= truth[0].start_s <= 2.0 and truth[1].start_s - truth[0].end_s >= 1.2
    i = int(truth[0].start_s * sr)
    assert np.corrcoef(x[i : i + 8000], a)[0, 1] > 0.99  # the request itself, under 40 dB of noise


def test_onnx_variants_are_named_by_their_quantization():
    name = load_benchmark("latency").onnx_variant_name
    graphs = ["encoder", "decoder", "llm"]
    assert name({"quantization": None, "quantized_graphs": []}) == "desta-edge (onnx)"
    assert name({"quantization": "int8", "quantized_graphs": graphs}) == "desta-edge (onnx int8)"
    assert name({"quantization": "int8", "quantized_graphs": ["llm"]}) == "desta-edge (onnx int8, llm only)"
    assert name({"quantization": "int4", "quantized_graphs": ["decoder", "llm"]}) == "desta-edge (onnx int4, decoder+llm only)"
    # two exports of one kind (before and after a change) keep apart
    int8 = {"quantization": "int8", "quantized_graphs": graphs}
    assert name(int8, "exports/int8-new", taken={"desta-edge (onnx int8)": {}}) == "desta-edge (onnx int8) int8-new"
    assert name(int8, "exports/int8-new", taken={"desta-edge (onnx)": {}}) == "desta-edge (onnx int8)"


def test_speech_cache_gives_back_the_synthesized_speech_without_the_synthesizer(tmp_path, monkeypatch):
    """$DESTA_SPEECH_CACHE: speech made once is read back exactly, so a machine without espeak-ng
    and flite (a GPU box) runs the benchmarks on the same audio."""
    recording = load_benchmark("recording")
    monkeypatch.setenv(recording.SPEECH_CACHE_ENV, str(tmp_path / "cache"))
    text, engine, voice = recording.QUESTIONS[8]  # hesitant: spoken in two parts
    first = recording._speak(text, engine, voice, tmp_path / "a.wav")
    assert len(list((tmp_path / "cache").glob("*.wav"))) == 2

    def unavailable(*args):
        raise AssertionError("synthesized again although the cache holds it")

    monkeypatch.setattr(recording, "_synthesize", unavailable)
    again = recording._speak(text, engine, voice, tmp_path / "b.wav")
    assert again.dtype == np.float32 and np.array_equal(again, first)
    with np.testing.assert_raises(AssertionError):  # another voice is not in the cache
        recording._speak(text, engine, "en-us", tmp_path / "c.wav")


def test_an_unanswered_question_is_told_apart_by_what_dropped_it():
    """score()'s "missed" says why: a question the endpointer never ended is "not heard"; one it
    heard and a rule dropped carries that rule (a filler, --max-waiting's skip, a click)."""
    bench = load_benchmark("latency")
    U = load_benchmark("recording").Utterance
    truth = [U(text=f"q{i}", voice="v", start_s=2.0 + 3 * i, end_s=3.5 + 3 * i) for i in range(5)]
    events = [
        # q0 answered
        {"type": "speech_start", "utterance": 0, "audio_s": 2.0},
        {"type": "speech_end", "utterance": 0, "audio_s": 4.1, "speech_end_s": 3.6},
        {"type": "token", "utterance": 0, "wall_s": 4.3, "text": "A"},
        {"type": "answer", "utterance": 0, "wall_s": 4.5, "text": "A", "transcript": "q0",
         "timings_ms": {"total": 500, "first_token": 200, "encoder": 100}},
        # q1 heard, then dropped as a filler; q2 heard, then skipped by --max-waiting
        {"type": "speech_start", "utterance": 1, "audio_s": 5.0},
        {"type": "speech_end", "utterance": 1, "audio_s": 7.1, "speech_end_s": 6.5},
        {"type": "discarded", "utterance": 1, "audio_s": 7.3, "reason": "filler", "transcript": "Um."},
        {"type": "speech_start", "utterance": 2, "audio_s": 8.0},
        {"type": "speech_end", "utterance": 2, "audio_s": 10.1, "speech_end_s": 9.6},
        {"type": "skipped", "utterance": 2, "audio_s": 10.1, "waiting": 1},
        # q3: only a click the endpointer discarded (decided well after the question's end)
        {"type": "speech_start", "utterance": 3, "audio_s": 11.2},
        {"type": "discarded", "utterance": 3, "audio_s": 13.5, "voiced_ms": 60, "reason": "short"},
        # q4: nothing at all
    ]

    class Stats:
        errors = speculative_used = speculative_discarded = turn_ends = 0

    arrivals = [(t / 10, 100.0 + t / 10) for t in range(1, 200)]
    r = bench.score(events, truth, arrivals, started_at=100.0, stats=Stats(), elapsed=19.9)
    assert r["detected_once"] == 1 and r["missed"] == 4
    assert r["missed_why"] == {"filler": 1, "skipped": 1, "short": 1, "not heard": 1}
    assert [bench.why_unanswered(events, u) for u in truth[1:]] == ["filler", "skipped", "short", "not heard"]
    assert bench._missed(r) == "4 (1 filler, 1 skipped, 1 short, 1 not heard)"

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

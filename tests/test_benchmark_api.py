"""benchmarks/api_batching.py: its clients against a real server on the tiny random model."""

import base64
from pathlib import Path

from conftest import load_benchmark
from desta_edge.streaming.openai_api import Api, ApiOptions

bench = load_benchmark("api_batching")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "what_is_the_capital_of_france.wav"


def test_a_round_posts_every_request_and_keeps_their_order(tiny_model):
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(EXAMPLE.read_bytes()).decode()}}
    bodies = [{"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
              {"max_tokens": 4, "messages": [{"role": "user", "content": [audio]}]},
              {"max_tokens": 4, "messages": [{"role": "user", "content": "what is this?"}]}]
    api = Api(tiny_model, ApiOptions(port=0, max_new_tokens=4, max_batch=3))
    api.start()
    try:
        alone = [bench.post(api.port, body)[1] for body in bodies]
        wall, times, answers = bench.one_round(api.port, bodies, clients=3)
    finally:
        api.stop()
    assert answers == alone and len(times) == 3 and all(0 < t <= wall for t in times)

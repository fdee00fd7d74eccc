"""`desta-edge api`: OpenAI-style chat completions with audio, over real HTTP on localhost.

The tiny random model answers (greedy, so exactly comparable with `generate`); the audio is the
example recording of a spoken question, and clips made here for the bad cases."""

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from desta_edge.runtime.audio import load_audio
from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM
from desta_edge.streaming.openai_api import Api, ApiError, ApiOptions, parse_chat_request

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "what_is_the_capital_of_france.wav"
LOCATOR = "<|AUDIO|>"
OPTS = ApiOptions(port=0, max_new_tokens=8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wav(x: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}


QUESTION = audio_part(EXAMPLE.read_bytes())


@pytest.fixture(scope="module")
def api(tiny_model):
    a = Api(tiny_model, OPTS)
    a.start()
    yield a
    a.stop()


def post(api: Api, body, path: str = "/v1/chat/completions") -> tuple[int, dict | bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{api.port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers["Content-Type"] == "application/json" else raw
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(api: Api, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api.port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_requests_become_the_seeds_messages():
    """Audio parts become <|AUDIO|> where they stand; audio alone gets the assistant's instruction;
    a request without a system message gets the assistant's; `developer` is a system message."""
    body = {"model": "anything", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Listen:"}, QUESTION,
                                     {"type": "text", "text": "Who speaks?"}]},
        {"role": "assistant", "content": "A man."},
        {"role": "user", "content": [QUESTION]}]}
    req = parse_chat_request(body, LOCATOR, OPTS)
    assert [(m["role"], m["content"]) for m in req.messages] == [
        ("system", ASSISTANT_SYSTEM), ("user", f"Listen:\n{LOCATOR}\nWho speaks?"), ("assistant", "A man."),
        ("user", f"{LOCATOR}\n{ASSISTANT_PROMPT}")]
    first = req.messages[1]["audios"][0]
    assert first["text"] is None and np.array_equal(first["audio"].samples, load_audio(EXAMPLE).samples)
    assert req.audio_parts == ["messages[0].content[1]", "messages[2].content[0]"]
    assert (req.max_new_tokens, req.temperature, req.top_p, req.stream) == (8, 0.0, 1.0, False)
    plain = parse_chat_request({"messages": [{"role": "developer", "content": "Be brief."},
                                             {"role": "user", "content": [QUESTION]}],
                                "max_completion_tokens": 3, "temperature": 0.7, "seed": 1, "n": 1, "stop": None},
                               LOCATOR, ApiOptions(prompt=""))
    assert [(m["role"], m["content"]) for m in plain.messages] == [("system", "Be brief."), ("user", LOCATOR)]
    assert (plain.max_new_tokens, plain.temperature, plain.seed) == (3, 0.7, 1)


@pytest.mark.parametrize("body, param, says", [
    ([], None, "JSON object"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "role of system, developer"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n", "n=2 is not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["."]}, "stop", "stop=[\".\"] is not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "best_of": 2}, "best_of", "unknown or unsupported"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}, "max_tokens", "from 1 to 8"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}, "max_tokens", "an integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature", "from 0 to 2"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream", "true or false"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream_options": {"x": 1}}, "stream_options", "include_usage"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]",
     'got type "image_url"'),
    ({"messages": [{"role": "user", "content": f"say {LOCATOR}"}]}, "messages[0].content[0]", "input_audio part"),
    ({"messages": [{"role": "assistant", "content": [QUESTION]}]}, "messages[0].content[0]", "only user messages"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}, "messages",
     "must not be the assistant's"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "@@@"}}]}]},
     "messages[0].content[0]", "not valid base64"),
    ({"messages": [{"role": "user", "content": [audio_part(b"RIFF not really a wav file")]}]},
     "messages[0].content[0]", "cannot decode audio file messages[0].content[0]: Format not recognised"),
])
def test_bad_requests_name_the_field(body, param, says):
    with pytest.raises(ApiError) as bad:
        parse_chat_request(body, LOCATOR, OPTS)
    assert bad.value.status == HTTPStatus.BAD_REQUEST and bad.value.param == param and says in str(bad.value)


def test_bad_audio_is_refused_with_the_reason():
    nan = np.zeros(16000, np.float32)
    nan[8000] = np.nan
    for data, says in ((wav(nan, subtype="FLOAT"), "NaN"), (wav(np.zeros(31 * 16000, np.float32)), "30"),
                       (wav(np.zeros(0, np.float32)), "empty")):
        with pytest.raises(ApiError, match=says) as bad:
            parse_chat_request({"messages": [{"role": "user", "content": [audio_part(data)]}]}, LOCATOR, OPTS)
        assert "messages[0].content[0]" in str(bad.value)


def test_an_answer_is_the_models_greedy_answer(api, tiny_model):
    """The chat completion carries what `generate` answers to the same conversation, its
    transcript, token counts and stage timings; the stream's pieces join to the same text."""
    body = {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": [QUESTION]}]}
    status, out = post(api, body)
    assert status == 200 and out["object"] == "chat.completion" and out["model"] == "desta-edge"
    ref = tiny_model.generate([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": f"{LOCATOR}\n{ASSISTANT_PROMPT}",
                                "audios": [{"audio": str(EXAMPLE), "text": None}]}], max_new_tokens=8)
    (choice,) = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": ref.text[0]}
    assert choice["finish_reason"] == ("length" if len(ref.generated_ids[0]) == 8 else "stop")
    assert out["desta"]["transcripts"] == [{"part": "messages[1].content[0]", "text": ref.audios[0][1]}]
    assert out["usage"]["completion_tokens"] == len(ref.generated_ids[0]) and out["usage"]["prompt_tokens"] > 0
    assert out["desta"]["timings_ms"]["encoder"] > 0

    status, raw = post(api, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == ref.text[0]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["usage"]


def test_http_errors(api):
    assert post(api, b"{not json")[0] == 400
    status, err = post(api, {"messages": [{"role": "user", "content": "hi"}], "n": 3})
    assert status == 400 and err["error"]["param"] == "n" and err["error"]["type"] == "invalid_request_error"
    assert post(api, {"messages": []}, path="/v1/completions")[0] == 404
    assert get(api, "/v1/chat/completions")[0] == 405
    assert get(api, "/nothing")[0] == 404
    status, health = get(api, "/health")
    assert status == 200 and health["status"] == "ok" and health["busy"] is False and health["backend"] == "torch"
    assert get(api, "/v1/models")[1]["data"][0]["id"] == "desta-edge"


class Gated:
    """The tiny model behind a gate the test opens, noting the batch size of each call; it can be
    told to fail its next call of a kind ("stream" or "generate")."""

    def __init__(self, model) -> None:
        self._model, self.calls, self.fail = model, [], None
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _enter(self, kind: str, n: int) -> None:
        self.calls.append((kind, n))
        self.entered.set()
        assert self.gate.wait(60)
        if self.fail == kind:
            self.fail = None
            raise RuntimeError("out of memory")

    def stream(self, messages, **kwargs):
        self._enter("stream", 1)
        return self._model.stream(messages, **kwargs)

    def generate(self, messages, **kwargs):
        self._enter("generate", len(messages))
        return self._model.generate(messages, **kwargs)


def test_waiting_requests_are_batched_and_failures_stay_alone(tiny_model):
    """Greedy requests that wait while the model is busy are answered in one batch, each with the
    answer it gets alone; a streamed one runs alone; one more than the queue holds gets 503; a
    request the model fails on gets 500 and the next is served; a body over the limit gets 413; a
    client that leaves mid-stream does not stop the server."""
    model = Gated(tiny_model)
    api = Api(model, ApiOptions(port=0, max_new_tokens=4, max_queue=3, max_batch=4, max_body_bytes=1 << 20))
    api.start()
    try:
        hi = {"messages": [{"role": "user", "content": "hi"}]}
        spoken = {"messages": [{"role": "user", "content": [QUESTION]}]}
        model.fail = "stream"
        status, err = post(api, hi)
        assert status == 500 and "RuntimeError: out of memory" in err["error"]["message"]
        alone = {"hi": post(api, hi), "spoken": post(api, spoken)}
        assert all(status == 200 for status, _ in alone.values())

        def behind_a_busy_model(bodies: dict, *, then=lambda: None) -> dict:
            """Post `bodies` one by one while the model is busy with a first request, call `then`,
            free the model; the replies by name."""
            model.gate.clear()
            model.entered.clear()
            model.calls.clear()
            replies = {}
            threads = [threading.Thread(target=lambda: post(api, hi))]
            threads[0].start()
            assert model.entered.wait(60)
            for name, body in bodies.items():
                threads.append(threading.Thread(target=lambda n=name, b=body: replies.update({n: post(api, b)})))
                threads[-1].start()
                wait_for(lambda n=len(threads) - 1: get(api, "/health")[1]["waiting"] == n)
            then()
            model.gate.set()
            for t in threads:
                t.join(120)
            return replies

        def refused() -> None:
            status, err = post(api, hi)
            assert status == 503 and "busy" in err["error"]["message"]

        results = behind_a_busy_model({"streamed": {**hi, "stream": True}, "hi": hi, "spoken": spoken}, then=refused)
        assert model.calls == [("stream", 1), ("stream", 1), ("generate", 2)]
        for name in ("hi", "spoken"):
            status, out = results[name]
            assert status == 200 and out["desta"]["timings_ms"]["batch_size"] == 2
            assert out["choices"] == alone[name][1]["choices"] and out["usage"] == alone[name][1]["usage"]
            assert out["desta"]["transcripts"] == alone[name][1]["desta"]["transcripts"]
        assert get(api, "/health")[1]["batches"] == {"1": 5, "2": 1}  # failed, alone x2, first, streamed

        def fail_next() -> None:
            model.fail = "generate"

        again = behind_a_busy_model({"hi": hi, "spoken": spoken}, then=fail_next)  # the batch fails ...
        assert model.calls == [("stream", 1), ("generate", 2), ("stream", 1), ("stream", 1)]  # ... so one by one
        assert {name: reply[1]["choices"] for name, reply in again.items()} == \
            {name: reply[1]["choices"] for name, reply in alone.items()}

        with socket.create_connection(("127.0.0.1", api.port)) as s:  # announces a body over the limit
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
            reply = s.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.0 413 ") and b"1048577 bytes; at most 1048576" in reply

        body = json.dumps({**hi, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", api.port)) as s:  # asks for a stream, then leaves
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: get(api, "/health")[1]["batches"].get("1", 0) == 7)
        assert post(api, hi)[0] == 200
    finally:
        model.gate.set()
        api.stop()


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_api_options_are_checked():
    for bad, says in (({"port": 65536}, "port"), ({"max_new_tokens": 0}, "max_new_tokens"),
                      ({"max_queue": -1}, "max_queue")):
        with pytest.raises(ValueError, match=says):
            ApiOptions(**bad)

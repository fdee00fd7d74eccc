"""`desta-edge api`: an OpenAI-style HTTP endpoint for whole spoken requests.

For apps that already speak the OpenAI chat API (its clients, curl, agent frameworks):
`POST /v1/chat/completions` takes the messages of a chat completion, whose user messages may hold
`input_audio` parts (base64 audio in any format soundfile reads, up to 30 s each), and answers with
a `chat.completion`, or with `"stream": true` with server-sent `chat.completion.chunk` events and
`data: [DONE]`. `GET /v1/models` lists the one model served; `GET /health` reports on the server.

Each audio part becomes one `<|AUDIO|>` of the seed's message format where it stands, so the
text around it reads as in the request. As in `listen`, a request without a system message gets
the assistant's, and a user message of audio alone gets the assistant's instruction after it
("Reply to the speaker."), so a spoken question is answered rather than described. Greedy
decoding unless the request gives a temperature above 0. Extension fields under `desta`: the
transcript of each audio part and the stage timings. Fields this server cannot honour are
refused with 400 and their name, unless they hold their neutral value (`"n": 1`, `"stop": null`,
`"frequency_penalty": 0`, ...), so no request is silently answered other than it asked.

One worker runs the model. Requests that wait for it while it is busy are answered together, up
to `max_batch` at a time, when they can be (not streamed, greedy, the same answer cap): a batch
gives each the answer it would have had alone (batches are left-padded; tested), and more answers
per minute, though each waits for the longest in its batch (benchmarks/api_batching.py). Streamed
and sampled requests run alone. Up to `max_queue` requests wait, and beyond that a request gets
503. Unlike `desta-edge serve` there is no endpointing: each audio part is one request. Binds
127.0.0.1 by default; no authentication (an `Authorization` header is ignored).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from desta_edge.runtime.audio import AudioError, decode_audio
from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# request fields accepted only at their neutral value: name -> the values that change nothing
NEUTRAL = {"n": (1,), "stop": (None, [], ""), "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0),
           "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",),
           "parallel_tool_calls": (False, True), "response_format": ({"type": "text"},), "modalities": (["text"],),
           "store": (False,)}
IGNORED = {"model", "user", "metadata", "service_tier"}  # names and labels that do not change the answer
ACCEPTED = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stream",
            "stream_options"}


@dataclass(frozen=True)
class ApiOptions:
    host: str = "127.0.0.1"  # localhost only by default; "0.0.0.0" serves the network (no authentication)
    port: int = 8000  # 0: any free port (see `Api.port`)
    model_id: str = "desta-edge"  # the name in /v1/models and in every response
    system: str = ASSISTANT_SYSTEM  # the system message of a request that has none ("": none)
    prompt: str = ASSISTANT_PROMPT  # the instruction after a user message of audio alone ("": none)
    max_new_tokens: int = 256  # the default answer cap, and the most a request may ask for
    max_queue: int = 8  # requests that may wait while the model is busy; one more gets 503
    max_batch: int = 8  # waiting requests answered together at most (1: one at a time)
    max_body_bytes: int = 32 << 20  # a larger request body gets 413 (30 s of 48 kHz stereo WAV is 15 MB in base64)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {self.port}")
        if self.max_new_tokens < 1 or self.max_queue < 0 or self.max_batch < 1 or self.max_body_bytes < 1:
            raise ValueError(f"need max_new_tokens >= 1, max_queue >= 0, max_batch >= 1 and max_body_bytes >= 1, "
                             f"got {self.max_new_tokens}, {self.max_queue}, {self.max_batch} and {self.max_body_bytes}")


class ApiError(Exception):
    """A request the server refuses: HTTP status, message, and the request field at fault."""

    def __init__(self, status: HTTPStatus, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": None}}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, param)


@dataclass
class ChatRequest:
    """A chat completion request in the model's terms."""

    messages: list[dict]  # the seed's format: {"role", "content", "audios": [{"audio": Audio, "text": None}]}
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    audio_parts: list[str] = field(default_factory=list)  # where each audio came from ("messages[1].content[0]")


def parse_chat_request(body: Any, audio_locator: str, opts: ApiOptions = ApiOptions()) -> ChatRequest:
    """Check a chat completion request and decode its audio; ApiError (400) naming the field at fault.
    `opts`: the answer cap, and the system message and instruction a request may leave out."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    for name, value in body.items():
        if name in NEUTRAL and value not in NEUTRAL[name]:
            raise _bad(f"{name}={json.dumps(value)} is not supported here (only {json.dumps(NEUTRAL[name][0])})",
                       name)
        if name not in NEUTRAL and name not in IGNORED and name not in ACCEPTED:
            raise _bad(f"unknown or unsupported field {name!r}", name)

    def number(name: str, kind: type, low: float, high: float, default):
        value = body.get(name)
        if value is None:
            return default
        types = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, types) or not low <= value <= high:
            raise _bad(f"{name} must be {'a number' if kind is float else 'an integer'} from {low} to {high}, "
                       f"got {json.dumps(value)}", name)
        return kind(value)

    cap_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    req = ChatRequest(messages=[], max_new_tokens=number(cap_name, int, 1, opts.max_new_tokens, opts.max_new_tokens),
                      temperature=number("temperature", float, 0, 2, 0.0), top_p=number("top_p", float, 0, 1, 1.0),
                      seed=number("seed", int, 0, 2**63 - 1, None))
    req.stream = body.get("stream") or False  # absent or null: no stream
    if not isinstance(req.stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise _bad('stream_options may only hold "include_usage"', "stream_options")
    req.include_usage = bool(options.get("include_usage", False))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        req.messages.append(_message(m, f"messages[{i}]", audio_locator, req.audio_parts, opts.prompt))
    if req.messages[-1]["role"] == "assistant":
        raise _bad("the last message must not be the assistant's: there is nothing to answer", "messages")
    if opts.system and all(m["role"] != "system" for m in req.messages):
        req.messages.insert(0, {"role": "system", "content": opts.system})
    return req


def _message(m: Any, where: str, audio_locator: str, audio_parts: list[str], prompt: str) -> dict:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise _bad(f"{where} must be an object with a role of {', '.join(ROLES)}", where)
    role, content = ROLES[m["role"]], m.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise _bad(f"{where}.content must be text or a non-empty list of content parts", f"{where}.content")
    texts, audios = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if audio_locator in part["text"]:
                raise _bad(f"{at}.text must not contain {audio_locator}: send audio as an input_audio part", at)
            texts.append(part["text"])
        elif kind == "input_audio":
            if role != "user":
                raise _bad(f"{at}: only user messages may hold audio", at)
            audios.append({"audio": _decode_audio(part.get("input_audio"), at), "text": None})
            audio_parts.append(at)
            texts.append(audio_locator)
        else:
            raise _bad(f"{at} must be a text or an input_audio part, got type {json.dumps(kind)}", at)
    if audios and prompt and all(t == audio_locator for t in texts):  # audio alone: say what to do with it
        texts.append(prompt)
    out = {"role": role, "content": "\n".join(texts)}
    if audios:
        out["audios"] = audios
    return out


def _decode_audio(spec: Any, at: str):
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise _bad(f'{at}.input_audio must be {{"data": BASE64, "format": "wav"}}', at)
    try:
        raw = base64.b64decode(spec["data"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{at}.input_audio.data is not valid base64: {e}", at) from e
    try:  # any format soundfile reads, whatever "format" says
        return decode_audio(raw, source=at)
    except AudioError as e:  # unreadable, cut short, empty, NaN/Inf samples, longer than the 30 s window
        raise _bad(str(e), at) from e


@dataclass
class _Job:
    """One request handed to the model's worker; `done` is set with `result` or `error`."""

    req: ChatRequest
    send_chunk: Any = None  # streamed: called with each chunk, from the worker's thread
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None

    @property
    def batchable(self) -> bool:
        return self.send_chunk is None and self.req.temperature == 0  # greedy: a batch gives the same answer


class Api:
    """Serves a loaded model over HTTP; see the module docstring."""

    def __init__(self, model, opts: ApiOptions = ApiOptions()) -> None:
        self.model, self.opts = model, opts
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._admitted = 0  # requests running or waiting
        self._running = 0  # requests in the worker's current batch
        self._count_lock = threading.Lock()
        self.requests = 0  # requests answered
        self.batches: dict[int, int] = {}  # batch size -> how many ran
        self.started, self.created = time.monotonic(), int(time.time())
        self._http = ThreadingHTTPServer((opts.host, opts.port), _Handler)  # binds now: OSError if taken
        self._http.daemon_threads = True
        self._http.api = self
        self.port: int = self._http.server_address[1]
        self._thread: threading.Thread | None = None
        self._worker = threading.Thread(target=self._work, daemon=True, name="desta-edge-api-model")
        self._worker.start()

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def start(self) -> int:
        """Serve from a background thread; returns the port (tests, embedding apps)."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="desta-edge-api")
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving (from another thread than serve_forever's) and release the port."""
        self._http.shutdown()
        self._http.server_close()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(30)

    def health(self) -> dict:
        return {"status": "ok", "model": self.opts.model_id, "backend": self.model.backend_name,
                "busy": self._running > 0, "waiting": self._admitted - self._running, "requests": self.requests,
                "batches": dict(sorted(self.batches.items())), "uptime_s": round(time.monotonic() - self.started, 1)}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.opts.model_id, "object": "model", "created": self.created,
                                            "owned_by": "desta-edge"}]}

    # ------------------------------------------------------------------ requests

    def submit(self, req: ChatRequest, send_chunk=None) -> dict:
        """Queue a request for the model and wait for its `chat.completion` (from a handler's
        thread); with `send_chunk`, its chunks go there as they come. ApiError 503 when the
        queue is full."""
        with self._count_lock:
            waiting = self._admitted - self._running
            if waiting >= self.opts.max_queue + (0 if self._running else 1):
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"busy: the model is answering and "
                               f"{self.opts.max_queue} requests wait; try again shortly")
            self._admitted += 1
        job = _Job(req, send_chunk)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        """The model's thread: take the next request and those waiting behind it that can share
        its batch, answer them, repeat."""
        held: list[_Job | None] = []  # taken from the queue, for the next turn (None: stop)
        while True:
            first = held.pop() if held else self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.opts.max_batch and first.batchable:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is not None and nxt.batchable and nxt.req.max_new_tokens == first.req.max_new_tokens:
                    batch.append(nxt)
                else:
                    held.append(nxt)
                    break
            with self._count_lock:
                self._running = len(batch)
            try:
                self._run(batch)
            finally:
                with self._count_lock:
                    self._admitted -= len(batch)
                    self._running = 0
                    self.batches[len(batch)] = self.batches.get(len(batch), 0) + 1
                for job in batch:
                    job.done.set()

    def _run(self, batch: list[_Job]) -> None:
        """Answer a batch, or its requests one by one if it fails (so one bad request fails alone)."""
        if len(batch) > 1:
            try:
                for job, result in zip(batch, self.answer_batch([job.req for job in batch])):
                    job.result = result
                return
            except Exception:
                logger.warning("a batch of %d failed; answering its requests one by one", len(batch), exc_info=True)
        for job in batch:
            try:
                job.result = self.answer(job.req, job.send_chunk)
            except Exception as e:  # the handler reports it; the worker goes on
                job.error = e

    def answer(self, req: ChatRequest, send_chunk=None) -> dict:
        """Run one request on the model (the worker's thread); with `send_chunk`, stream the
        answer's pieces to it as `chat.completion.chunk` objects. Returns the `chat.completion`."""
        import torch

        head = _head(self.opts.model_id)
        if req.seed is not None:
            torch.manual_seed(req.seed)
        try:
            stream = self.model.stream(req.messages, max_new_tokens=req.max_new_tokens,
                                       do_sample=req.temperature > 0, temperature=req.temperature or 1.0,
                                       top_p=req.top_p)
        except ValueError as e:  # the model refuses the conversation (e.g. longer than its context)
            raise _bad(str(e), "messages") from e
        if send_chunk is not None:
            send_chunk(_chunk(head, {"role": "assistant", "content": ""}))
        try:
            for piece in stream:
                if send_chunk is not None:
                    send_chunk(_chunk(head, {"content": piece}))
        except BaseException:
            stream.cancel()
            raise
        out = _completion(head, req, stream.text, len(stream.generated_ids), stream.prompt_tokens, stream.looped,
                          stream.audios, stream.timings_ms)
        if send_chunk is not None:
            last = _chunk(head, {}, out["choices"][0]["finish_reason"])
            last["desta"] = out["desta"]
            send_chunk(last)
            if req.include_usage:
                send_chunk({**_chunk(head, {}), "choices": [], "usage": out["usage"]})
        self.requests += 1
        return out

    def answer_batch(self, reqs: list[ChatRequest]) -> list[dict]:
        """Greedy requests with the same cap, in one `generate` call (the worker's thread)."""
        try:
            out = self.model.generate([r.messages for r in reqs], max_new_tokens=reqs[0].max_new_tokens)
        except ValueError as e:
            raise _bad(str(e), "messages") from e
        results, n = [], 0
        for i, req in enumerate(reqs):
            audios, n = out.audios[n : n + len(req.audio_parts)], n + len(req.audio_parts)
            timings = {**out.timings_ms, "batch_size": len(reqs)}
            results.append(_completion(_head(self.opts.model_id), req, out.text[i], len(out.generated_ids[i]),
                                       out.prompt_tokens[i], out.looped[i], audios, timings))
        self.requests += len(reqs)
        return results


def _head(model_id: str) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_id}


def _completion(head: dict, req: ChatRequest, text: str, n_tokens: int, prompt_tokens: int, looped: bool,
                audios: list[tuple[str, str]], timings_ms: dict) -> dict:
    """A `chat.completion` object, with the `desta` extension."""
    reason = "length" if n_tokens >= req.max_new_tokens and not looped else "stop"
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n_tokens,
                      "total_tokens": prompt_tokens + n_tokens},
            "desta": {"transcripts": [{"part": at, "text": t} for at, (_, t) in zip(req.audio_parts, audios)],
                      "timings_ms": timings_ms, "looped": looped}}


def _chunk(head: dict, delta: dict, finish_reason: str | None = None) -> dict:
    return {**head, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


class _Handler(BaseHTTPRequestHandler):
    server_version = "desta-edge"

    @property
    def api(self) -> Api:
        return self.server.api

    def log_message(self, fmt: str, *args) -> None:  # the module logger, not stderr
        logger.info("%s %s", self.address_string(), fmt % args)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == HEALTH_PATH:
            self._json(HTTPStatus.OK, self.api.health())
        elif path == MODELS_PATH:
            self._json(HTTPStatus.OK, self.api.models())
        elif path == CHAT_PATH:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, ApiError(HTTPStatus.METHOD_NOT_ALLOWED,
                                                               f"{CHAT_PATH} takes POST").body())
        else:
            self._json(HTTPStatus.NOT_FOUND, ApiError(HTTPStatus.NOT_FOUND, f"no such path {path!r}: try "
                                                      f"{CHAT_PATH}, {MODELS_PATH} or {HEALTH_PATH}").body())

    def do_POST(self) -> None:
        try:
            if self.path.split("?")[0] != CHAT_PATH:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such path {self.path!r}: POST to {CHAT_PATH}")
            req = parse_chat_request(self._body(), self.api.model.config.audio_locator, self.api.opts)
            if req.stream:
                self._stream(req)
            else:
                self._json(HTTPStatus.OK, self.api.submit(req))
        except ApiError as e:
            self._json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            logger.info("%s left before its answer was sent", self.address_string())
        except Exception as e:  # the model failed on this request: report it, keep serving
            logger.exception("request failed")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}").body())

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if int(length) > self.api.opts.max_body_bytes:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is {int(length)} bytes; at most "
                           f"{self.api.opts.max_body_bytes} are taken")
        try:
            return json.loads(self.rfile.read(int(length)))
        except ValueError as e:
            raise _bad(f"the request body is not JSON: {e}") from e

    def _stream(self, req: ChatRequest) -> None:
        """Server-sent events; a failure after the headers went out is sent as an error event."""
        started = False

        def send(obj: dict) -> None:
            nonlocal started
            if not started:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                started = True
            self.wfile.write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()

        try:
            self.api.submit(req, send)
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:
            if not started:
                raise
            logger.exception("request failed while streaming")
            send(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}").body())
        self.wfile.write(b"data: [DONE]\n\n")

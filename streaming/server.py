"""`desta-edge serve`: the listener behind a WebSocket, for apps on this machine or the network.

A client connects to `ws://HOST:PORT/?rate=16000&channels=1` (optionally also `barge_in=0|1`,
`resume=0|1`, `echo_guard=0|1`, `half_duplex=0|1`, `max_waiting=N`, `max_new_tokens=N`,
`system=TEXT` and `prompt=TEXT`, URL-encoded, overriding the server's settings for this client;
`reference_channel=N`: channel N of its PCM is what its loudspeaker plays, cancelled from the others),
streams raw little-endian 16-bit PCM as binary messages (any size; a sample split across two
messages is joined), and receives the events of `desta-edge listen --json` as text messages, one
JSON object each: `ready` first, then `speech_start`, `transcript`, `token`, `answer`, ... as the
audio comes in. A client that speaks the answers through a loudspeaker sends the text messages
`{"type": "playback", "active": true}` and `... false` as the sound starts and ends
(`Assistant.playback`: its echo is then not taken for a request). A text message
`{"type": "end"}` (or closing the connection) ends the stream: the server answers what is still
pending, sends a `summary` and closes. A client that disconnects without `end` gets nothing more:
its pending requests are dropped and the server is free for the next client at once. A client
that sends nothing for `idle_timeout_s` is ended as if it had sent `end` (its summary says
`"ended_by": "idle"`), so a stalled app cannot hold the server.

One client at a time: the model answers one request at a time, so a second listener would only
queue behind the first one's answers. While a client is connected, others are refused with HTTP
503 (their handshake fails; nothing is queued). The server binds 127.0.0.1 by default; pass
`--host 0.0.0.0` to serve the network (there is no authentication).

The model is loaded and warmed up once, before the server accepts connections. Each connection
gets a fresh `Assistant` (its own endpointer, stream clock and counters) on that model.

For supervisors: `GET /health` answers 200 with a JSON object (busy or not, sessions served,
uptime) without taking the client slot, and `notify_systemd` tells systemd (`Type=notify`) when
the server is ready, once the model is loaded and the port bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from desta_edge.runtime.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

from .assistant import Assistant, AssistantOptions
from .echo import require_aec
from .sources import SAMPLE_RATE, pcm_source
from .vad import EndpointOptions

logger = logging.getLogger(__name__)

MAX_CHANNELS = 8
MAX_WAITING = 1000  # the largest max_waiting a client may ask for
MAX_MESSAGE_BYTES = 1 << 20  # largest message a client may send (about 33 s of 16 kHz mono PCM)
MAX_TEXT_CHARS = 2000  # the longest system message or prompt a client may set
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"  # localhost only by default; "0.0.0.0" serves the network (no authentication)
    port: int = 8765  # 0: any free port (see `Server.port`)
    idle_timeout_s: float = 60.0  # a client silent (no message) this long is ended as if it sent `end`; 0: never

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {self.port}")
        if not self.idle_timeout_s >= 0:  # also refuses NaN
            raise ValueError(f"idle_timeout_s must be 0 (never) or more, got {self.idle_timeout_s}")


def require_websockets() -> None:
    try:
        import websockets  # noqa: F401
    except ImportError as e:
        raise RuntimeError('desta-edge serve needs websockets: pip install "desta-edge[server]"') from e


def notify_systemd(state: str) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", ...) to systemd's notification socket when the
    process runs as a `Type=notify` service; False (and nothing sent) otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as e:
        logger.warning("could not notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], e)
        return False
    return True


@dataclass(frozen=True)
class SessionParams:
    """What a client's query asks for ("/?rate=48000&channels=2&barge_in=0&prompt=Answer+in+one+word.").
    None: the server's setting."""

    rate: int = SAMPLE_RATE  # its PCM's sample rate
    channels: int = 1  # and channel count (interleaved)
    reference_channel: int | None = None  # the channel that carries its loudspeaker's signal (echo cancelled)
    barge_in: bool | None = None  # 0 suits a client streaming a recording
    resume: bool | None = None  # see AssistantOptions.resume_false_interruptions
    echo_guard: bool | None = None  # see AssistantOptions.echo_guard
    half_duplex: bool | None = None  # see AssistantOptions.half_duplex
    max_waiting: int | None = None  # see AssistantOptions.max_waiting
    max_new_tokens: int | None = None  # a lower cap per answer than the server's (never a higher one)
    system: str | None = None  # the system message of this client's turns
    prompt: str | None = None  # the instruction after each of its utterances

    @classmethod
    def parse(cls, path: str) -> SessionParams:
        """ValueError naming the parameter when one is bad or unknown."""
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        known = ("rate", "channels", "reference_channel", "barge_in", "resume", "echo_guard", "half_duplex",
                 "max_waiting", "max_new_tokens", "system", "prompt")
        unknown = set(query) - set(known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}: expected {', '.join(known)}")

        def text(key: str) -> str | None:
            if key not in query:
                return None
            raw = query[key][-1]
            if not raw.strip() or len(raw) > MAX_TEXT_CHARS or "\0" in raw:
                raise ValueError(f"{key} must be non-empty text of at most {MAX_TEXT_CHARS} characters, "
                                 f"got {len(raw)} characters")
            return raw

        def number(key: str, low: int, high: int) -> int | None:
            if key not in query:
                return None
            raw = query[key][-1]
            if not raw.isdigit() or not low <= int(raw) <= high:
                raise ValueError(f"{key} must be an integer from {low} to {high}, got {raw!r}")
            return int(raw)

        def flag(key: str) -> bool | None:
            value = number(key, 0, 1)
            return None if value is None else bool(value)

        channels = number("channels", 1, MAX_CHANNELS) or 1
        reference = None if "reference_channel" not in query else number("reference_channel", 0, channels - 1)
        if reference is not None and channels < 2:
            raise ValueError("reference_channel needs channels >= 2: the loudspeaker's signal and the microphone")
        return cls(rate=number("rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE) or SAMPLE_RATE, channels=channels,
                   reference_channel=reference, barge_in=flag("barge_in"), resume=flag("resume"),
                   echo_guard=flag("echo_guard"), half_duplex=flag("half_duplex"),
                   max_waiting=number("max_waiting", 0, MAX_WAITING),
                   max_new_tokens=number("max_new_tokens", 1, 1 << 20), system=text("system"), prompt=text("prompt"))

    def options(self, opts: AssistantOptions, audio_locator: str) -> AssistantOptions:
        """The server's assistant options with this client's overrides; ValueError for a cap above
        the server's, or a text that holds the model's audio locator (each turn has one audio)."""
        if self.max_new_tokens is not None and self.max_new_tokens > opts.max_new_tokens:
            raise ValueError(f"max_new_tokens must be at most the server's {opts.max_new_tokens}, "
                             f"got {self.max_new_tokens}")
        for key in ("system", "prompt"):
            if audio_locator in (getattr(self, key) or ""):
                raise ValueError(f"{key} must not contain {audio_locator}: the server puts the audio before the prompt")
        given = {"barge_in": self.barge_in, "resume_false_interruptions": self.resume, "echo_guard": self.echo_guard,
                 "half_duplex": self.half_duplex, "max_waiting": self.max_waiting,
                 "max_new_tokens": self.max_new_tokens, "system": self.system, "prompt": self.prompt}
        return replace(opts, **{k: v for k, v in given.items() if v is not None})


class _Messages:
    """A blocking `read()` over the PCM messages of one connection (what `pcm_source` reads)."""

    def __init__(self) -> None:
        self._q: queue.Queue[bytes | None] = queue.Queue()

    def put(self, data: bytes | None) -> None:
        self._q.put(data)  # None: the stream has ended

    def read(self, _size: int = -1) -> bytes:
        data = self._q.get()
        if data is None:
            self._q.put(None)  # later reads also see the end
            return b""
        return data


class Server:
    """Serves one `Assistant` session per connection on a loaded model; see the module docstring."""

    def __init__(self, model, opts: AssistantOptions = AssistantOptions(), endpoint: EndpointOptions = EndpointOptions(),
                 server: ServerOptions = ServerOptions(), vad_factory: Callable[[], object] | None = None,
                 ready: dict | None = None) -> None:
        """vad_factory: builds each session's frame detector (tests pass a deterministic one);
        ready: extra fields of the `ready` event (e.g. the warm-up time)."""
        require_websockets()
        self.model, self.opts, self.endpoint, self.options = model, opts, endpoint, server
        self._vad_factory = vad_factory
        self._ready = ready or {}
        self._claim = None  # the connection being served, claimed at its handshake (event loop only)
        self.sessions = 0  # sessions served
        self.port: int | None = None  # the bound port, once listening
        self.started = time.monotonic()
        self._stop: asyncio.Event | None = None
        self._stopping = False  # stop() was called, perhaps before the event loop existed (a signal at startup)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None  # set by start()

    # ------------------------------------------------------------------ running

    def serve_forever(self, on_listening: Callable[[int], None] = lambda port: None) -> None:
        """Accept clients until `stop()` (or Ctrl-C); `on_listening(port)` once bound."""
        asyncio.run(self._main(on_listening))

    def start(self) -> int:
        """Serve from a background thread; returns the bound port (tests, embedding apps)."""
        bound = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(lambda _: bound.set(),), daemon=True,
                                        name="desta-edge-server")
        self._thread.start()
        if not bound.wait(30):
            raise RuntimeError("the server did not start listening within 30 s")
        return self.port

    def stop(self) -> None:
        """Stop accepting clients and close the connected one (1001); safe from a signal handler."""
        self._stopping = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    async def _main(self, on_listening: Callable[[int], None]) -> None:
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        if self._stopping:
            self._stop.set()
        async with serve(self._session, self.options.host, self.options.port, process_request=self._admit,
                         max_size=MAX_MESSAGE_BYTES) as ws_server:
            self.port = next(iter(ws_server.sockets)).getsockname()[1]
            on_listening(self.port)
            await self._stop.wait()

    def busy(self) -> bool:
        """A client holds the server (event loop only)."""
        from websockets.protocol import State

        return self._claim is not None and self._claim.state is not State.CLOSED

    def health(self) -> dict:
        """What `GET /health` answers."""
        return {"status": "ok", "busy": self.busy(), "sessions": self.sessions,
                "uptime_s": round(time.monotonic() - self.started, 1), "backend": self.model.backend_name,
                "idle_timeout_s": self.options.idle_timeout_s}

    # ------------------------------------------------------------------ one client

    def _admit(self, connection, request):
        """Answer `GET /health`; refuse a handshake while another client is connected (503) or with
        a bad format (400)."""
        if urlsplit(request.path).path == HEALTH_PATH:
            response = connection.respond(HTTPStatus.OK, json.dumps(self.health()) + "\n")
            del response.headers["Content-Type"]  # websockets' headers take several values per name
            response.headers["Content-Type"] = "application/json"
            return response
        try:
            params = SessionParams.parse(request.path)
            params.options(self.opts, self.model.config.audio_locator)
            if params.reference_channel is not None:
                require_aec()
        except (ValueError, RuntimeError) as e:
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{e}\n")
        if self.busy():
            logger.info("refused %s: another client is connected", connection.remote_address)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy: desta-edge serves one client at a time\n")
        # claimed at the handshake, so that two handshakes in a row cannot both pass; a claim whose
        # handshake then failed is closed, and the next client may take its place
        self._claim = connection
        return None

    async def _session(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict | None] = asyncio.Queue()
        messages = _Messages()
        params = SessionParams.parse(ws.request.path)
        opts = params.options(self.opts, self.model.config.audio_locator)
        vad = self._vad_factory() if self._vad_factory else None
        assistant = Assistant(self.model, opts, self.endpoint,
                              emit=lambda e: loop.call_soon_threadsafe(events.put_nowait, e), vad=vad)
        self.sessions += 1
        logger.info("client %s connected (%d Hz, %d channel(s))", ws.remote_address, params.rate, params.channels)
        ended_by = None  # "client": it sent `end` (and waits for the summary); "idle": it sent nothing for too long
        timeout = self.options.idle_timeout_s or None

        async def send_events() -> None:
            while (event := await events.get()) is not None:
                try:
                    await ws.send(json.dumps(event, ensure_ascii=False))
                except ConnectionClosed:
                    pass  # keep draining, so the listener's thread never blocks on us

        sender = asyncio.create_task(send_events())
        await events.put({"type": "ready", "audio_s": 0.0, "wall_s": 0.0, "rate": params.rate,
                          "channels": params.channels, "reference_channel": params.reference_channel,
                          "barge_in": opts.barge_in, "resume": opts.resume_false_interruptions,
                          "echo_guard": opts.echo_guard, "half_duplex": opts.half_duplex, "max_waiting": opts.max_waiting,
                          "max_new_tokens": opts.max_new_tokens, "system": opts.system, "prompt": opts.prompt,
                          "idle_timeout_s": self.options.idle_timeout_s, **self._ready})
        run = loop.run_in_executor(None, assistant.run,
                                   pcm_source(messages, rate=params.rate, channels=params.channels,
                                              reference_channel=params.reference_channel))
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout)  # cancelling recv() loses no message
                except asyncio.TimeoutError:
                    ended_by = "idle"
                    break
                if isinstance(message, bytes):
                    messages.put(message)
                    continue
                try:
                    control = json.loads(message)
                    kind = control.get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "end":
                    ended_by = "client"
                    break
                if kind == "playback" and isinstance(control.get("active"), bool):
                    assistant.playback(control["active"])
                    continue
                assistant.report_error(f'unknown text message {message[:80]!r}: send PCM as binary messages, '
                                       f'{{"type": "playback", "active": true|false}} as a loudspeaker starts '
                                       f'and stops, and {{"type": "end"}} to finish')
        except ConnectionClosed:
            pass
        finally:
            if ended_by is None:
                assistant.abort()  # nobody is listening any more: drop what is pending
            messages.put(None)
            try:
                await run
                await events.put({"type": "summary", **assistant.summary(), "ended_by": ended_by or "disconnect"})
            except Exception as e:  # the listener itself failed: report it and free the server for the next client
                logger.exception("session failed")
                assistant.report_error(f"{type(e).__name__}: {e}")
            loop.call_soon(events.put_nowait, None)  # after the events already scheduled from other threads
            await sender
            self._claim = None
            logger.info("client %s finished: %s", ws.remote_address,
                        {"client": "it sent end", "idle": "it sent nothing for a while"}.get(ended_by, "it left"))

"""`desta-edge serve`: the listener behind a WebSocket, for apps on this machine or the network.

A client connects to `ws://HOST:PORT/?rate=16000&channels=1` (optionally also `barge_in=0|1` and
`max_waiting=N`, overriding the server's settings for this client), streams raw little-endian 16-bit
PCM as binary messages (any size; a sample split across two messages is joined), and receives
the events of `desta-edge listen --json` as text messages, one JSON object each: `ready` first,
then `speech_start`, `transcript`, `token`, `answer`, ... as the audio comes in. A text message
`{"type": "end"}` (or closing the connection) ends the stream: the server answers what is still
pending, sends a `summary` and closes. A client that disconnects without `end` gets nothing more:
its pending requests are dropped and the server is free for the next client at once.

One client at a time: the model answers one request at a time, so a second listener would only
queue behind the first one's answers. While a client is connected, others are refused with HTTP
503 (their handshake fails; nothing is queued). The server binds 127.0.0.1 by default; pass
`--host 0.0.0.0` to serve the network (there is no authentication).

The model is loaded and warmed up once, before the server accepts connections. Each connection
gets a fresh `Assistant` (its own endpointer, stream clock and counters) on that model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from .assistant import Assistant, AssistantOptions
from .sources import SAMPLE_RATE, pcm_source
from .vad import EndpointOptions

logger = logging.getLogger(__name__)

MAX_RATE = 192_000  # highest PCM rate a client may announce
MAX_CHANNELS = 8
MAX_WAITING = 1000  # the largest max_waiting a client may ask for
MAX_MESSAGE_BYTES = 1 << 20  # largest message a client may send (about 33 s of 16 kHz mono PCM)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"  # localhost only by default; "0.0.0.0" serves the network (no authentication)
    port: int = 8765  # 0: any free port (see `Server.port`)


def require_websockets() -> None:
    try:
        import websockets  # noqa: F401
    except ImportError as e:
        raise RuntimeError('desta-edge serve needs websockets: pip install "desta-edge[server]"') from e


@dataclass(frozen=True)
class SessionParams:
    """What a client's query asks for ("/?rate=48000&channels=2&barge_in=0")."""

    rate: int = SAMPLE_RATE  # its PCM's sample rate
    channels: int = 1  # and channel count (interleaved)
    barge_in: bool | None = None  # None: the server's setting; 0 suits a client streaming a recording
    max_waiting: int | None = None  # None: the server's setting (see AssistantOptions.max_waiting)

    @classmethod
    def parse(cls, path: str) -> SessionParams:
        """ValueError naming the parameter when one is bad or unknown."""
        query = parse_qs(urlsplit(path).query)
        unknown = set(query) - {"rate", "channels", "barge_in", "max_waiting"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}: expected rate, channels, barge_in "
                             "and max_waiting")

        def number(key: str, low: int, high: int) -> int | None:
            if key not in query:
                return None
            raw = query[key][-1]
            if not raw.isdigit() or not low <= int(raw) <= high:
                raise ValueError(f"{key} must be an integer from {low} to {high}, got {raw!r}")
            return int(raw)

        barge_in = number("barge_in", 0, 1)
        return cls(rate=number("rate", 1, MAX_RATE) or SAMPLE_RATE, channels=number("channels", 1, MAX_CHANNELS) or 1,
                   barge_in=None if barge_in is None else bool(barge_in),
                   max_waiting=number("max_waiting", 0, MAX_WAITING))

    def options(self, opts: AssistantOptions) -> AssistantOptions:
        """The server's assistant options with this client's overrides."""
        given = {"barge_in": self.barge_in, "max_waiting": self.max_waiting}
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
        self._stop: asyncio.Event | None = None
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
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    async def _main(self, on_listening: Callable[[int], None]) -> None:
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._session, self.options.host, self.options.port, process_request=self._admit,
                         max_size=MAX_MESSAGE_BYTES) as ws_server:
            self.port = next(iter(ws_server.sockets)).getsockname()[1]
            on_listening(self.port)
            await self._stop.wait()

    # ------------------------------------------------------------------ one client

    def _admit(self, connection, request):
        """Refuse a handshake while another client is connected (503) or with a bad format (400)."""
        try:
            SessionParams.parse(request.path)
        except ValueError as e:
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{e}\n")
        from websockets.protocol import State

        if self._claim is not None and self._claim.state is not State.CLOSED:
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
        opts = params.options(self.opts)
        vad = self._vad_factory() if self._vad_factory else None
        assistant = Assistant(self.model, opts, self.endpoint,
                              emit=lambda e: loop.call_soon_threadsafe(events.put_nowait, e), vad=vad)
        self.sessions += 1
        logger.info("client %s connected (%d Hz, %d channel(s))", ws.remote_address, params.rate, params.channels)
        ended = False  # the client asked for the end (and waits for the summary)

        async def send_events() -> None:
            while (event := await events.get()) is not None:
                try:
                    await ws.send(json.dumps(event, ensure_ascii=False))
                except ConnectionClosed:
                    pass  # keep draining, so the listener's thread never blocks on us

        sender = asyncio.create_task(send_events())
        await events.put({"type": "ready", "audio_s": 0.0, "wall_s": 0.0, "rate": params.rate,
                          "channels": params.channels, "barge_in": opts.barge_in, "max_waiting": opts.max_waiting,
                          **self._ready})
        run = loop.run_in_executor(None, assistant.run,
                                   pcm_source(messages, rate=params.rate, channels=params.channels))
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    messages.put(message)
                    continue
                try:
                    ended = json.loads(message).get("type") == "end"
                except (ValueError, AttributeError):
                    ended = False
                if ended:
                    break
                assistant.report_error(f'unknown text message {message[:80]!r}: send PCM as binary messages, '
                                       f'and {{"type": "end"}} to finish')
        except ConnectionClosed:
            pass
        finally:
            if not ended:
                assistant.abort()  # nobody is listening any more: drop what is pending
            messages.put(None)
            try:
                await run
                await events.put({"type": "summary", **assistant.summary()})
            except Exception as e:  # the listener itself failed: report it and free the server for the next client
                logger.exception("session failed")
                assistant.report_error(f"{type(e).__name__}: {e}")
            loop.call_soon(events.put_nowait, None)  # after the events already scheduled from other threads
            await sender
            self._claim = None
            logger.info("client %s finished: %s", ws.remote_address, "ended" if ended else "disconnected")

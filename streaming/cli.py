"""`desta-edge listen`, `serve` and `api`: the always-on loop and the daemons from the command line.

For a person: a live transcript of what was heard, the answer as it streams, and its latency.
With `--json`: one event object per line (see `assistant.EVENT_TYPES`), then a summary line.
`serve` puts the loop behind a WebSocket (server.py); `api` answers whole spoken requests in the
OpenAI chat format over HTTP (openai_api.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from desta_edge.runtime.backends import add_backend_arguments, whisper_dtype
from desta_edge.runtime.prompt import ASSISTANT_PROMPT, ASSISTANT_SYSTEM

from .assistant import Assistant, AssistantOptions
from .openai_api import Api, ApiOptions
from .openai_api import logger as api_log
from .server import Server, ServerOptions, notify_systemd, require_websockets
from .server import logger as server_log
from .vad import DETECTORS, TURN_END_MS, Endpointer, EndpointOptions

EXIT_BAD_INPUT = 2


def register_cli(sub) -> None:
    p = sub.add_parser("listen", help="answer spoken queries from a microphone, a file or stdin")
    p.add_argument("--source", default="mic", help="mic (default), an audio file, or - for raw s16le PCM on stdin")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=None,
                      help="play a file at real-time pace (the default for files)")
    pace.add_argument("--fast", dest="realtime", action="store_false", help="feed a file as fast as possible")
    p.add_argument("--rate", type=int, default=16000, help="stdin PCM sample rate (default 16000)")
    p.add_argument("--channels", type=int, default=1, help="stdin PCM channels (default 1)")
    p.add_argument("--device", default=None, help="microphone name or index (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--reference-channel", type=int, default=None, metavar="N",
                   help="input channel N (of the microphone, a file or stdin PCM) carries what the loudspeaker "
                        "plays (-1: the last): its echo is cancelled from the other channels (pip install "
                        "\"desta-edge[aec]\"; apt install libspeexdsp1 too, so that the model hears speech "
                        "over the loudspeaker clearly)")
    _add_assistant_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    p.set_defaults(func=_cmd_listen)

    s = sub.add_parser("serve", help="answer spoken queries streamed over a WebSocket, one client at a time")
    _add_bind_arguments(s, ServerOptions.host, ServerOptions.port)
    s.add_argument("--idle-timeout-s", type=float, default=ServerOptions.idle_timeout_s,
                   help="end a client's stream, as if it had sent end, after this many seconds without a message "
                        "(default %(default)g; 0: never)")
    _add_assistant_arguments(s)
    s.add_argument("--half-duplex", action="store_true",
                   help="while a client reports that its loudspeaker plays ({\"type\": \"playback\"} messages), "
                        "hear nothing: its echo cannot be taken for a request, and nobody can interrupt")
    s.add_argument("--no-echo-guard", action="store_true",
                   help="answer speech heard during playback even when its transcript reads back a recent answer "
                        "(by default that is the answer's echo: a 'discarded' event, reason 'echo')")
    s.add_argument("--echo-tail-ms", type=int, default=AssistantOptions.echo_tail_ms,
                   help="how long after playback stops its echo may still be heard (default %(default)s)")
    s.set_defaults(func=_cmd_serve)

    a = sub.add_parser("api", help="answer OpenAI-style chat completions with audio over HTTP")
    _add_bind_arguments(a, ApiOptions.host, ApiOptions.port)
    _add_model_arguments(a)
    a.add_argument("--model-id", default=None, help="the model name clients see (default: the --model value)")
    a.add_argument("--system", default=ApiOptions.system,
                   help='system message of a request that has none ("": none; default: the assistant\'s, as in listen)')
    a.add_argument("--prompt", default=ApiOptions.prompt,
                   help='instruction after a user message of audio alone ("": none; default %(default)r)')
    a.add_argument("--max-new-tokens", type=int, default=ApiOptions.max_new_tokens,
                   help="answer cap when a request gives none, and the most one may ask for (default %(default)s)")
    a.add_argument("--max-queue", type=int, default=ApiOptions.max_queue,
                   help="requests that may wait while the model is busy; one more gets 503 (default %(default)s)")
    a.add_argument("--max-batch", type=int, default=ApiOptions.max_batch,
                   help="waiting requests answered together at most (not streamed, greedy, the same cap; "
                        "default %(default)s; 1: one at a time)")
    a.add_argument("--no-warm-up", action="store_true", help="serve at once; the first request then pays the "
                                                              "model's first-call costs")
    a.set_defaults(func=_cmd_api)


def _add_bind_arguments(p, host: str, port: int) -> None:
    """`--host` and `--port` of the daemons."""
    p.add_argument("--host", default=host,
                   help="address to bind (default %(default)s: this machine only; 0.0.0.0 serves the network, "
                        "without authentication)")
    p.add_argument("--port", type=int, default=port, help="port (default %(default)s; 0: any free one)")


def _add_model_arguments(p) -> None:
    p.add_argument("--model", default="tiny", help="preset, checkpoint directory or hub id (default: tiny)")
    p.add_argument("--model-device", default=None, help="cpu, cuda ... for the model (default: cuda if available)")
    add_backend_arguments(p)


def _add_assistant_arguments(p) -> None:
    """The model, prompt, endpointing and answering options `listen` and `serve` share."""
    d = EndpointOptions()
    _add_model_arguments(p)
    p.add_argument("--prompt", default=ASSISTANT_PROMPT, help="instruction after each utterance")
    p.add_argument("--system", default=ASSISTANT_SYSTEM, help="system message")
    p.add_argument("--max-new-tokens", type=int, default=128, help="cap per answer (default 128)")
    p.add_argument("--vad", choices=DETECTORS, default=d.detector,
                   help="what calls a frame speech: silero (a small neural network, robust to music and noise; the "
                        "default) or webrtcvad (README \"Endpointing in noise\")")
    p.add_argument("--silero-threshold", type=float, default=d.silero_threshold,
                   help="Silero speech probability that starts speech (default %(default)s)")
    p.add_argument("--silero-gain-db", type=float, default=d.silero_gain_db,
                   help="Silero also hears quiet audio raised by up to this many dB, for a talker far from the "
                        "microphone (default %(default)s; 0: off; README \"Quiet, far talkers\")")
    p.add_argument("--vad-aggressiveness", type=int, default=d.aggressiveness, help="webrtcvad mode 0-3")
    p.add_argument("--frame-ms", type=int, default=d.frame_ms, help="VAD frame: 10, 20 or 30 ms")
    p.add_argument("--pre-roll-ms", type=int, default=d.pre_roll_ms, help="audio kept before an onset")
    p.add_argument("--pause-ms", type=int, default=d.pause_ms, help="silence that starts speculative work")
    p.add_argument("--hangover-ms", type=int, default=d.hangover_ms,
                   help=f"silence that ends an utterance (default {d.hangover_ms})")
    p.add_argument("--turn-end-ms", type=int, default=None,
                   help=f"silence that ends an utterance the LLM judges a finished request (default {TURN_END_MS}, "
                        "kept between --pause-ms and --hangover-ms)")
    p.add_argument("--turn-threshold", type=float, default=AssistantOptions.turn_threshold,
                   help="end-of-turn probability that counts as finished (default %(default)s)")
    p.add_argument("--no-turn-detection", action="store_true",
                   help="always wait for the whole hangover (no end-of-turn check)")
    p.add_argument("--min-speech-ms", type=int, default=d.min_speech_ms, help="shorter voiced audio is ignored")
    p.add_argument("--noise-gate-db", type=float, default=d.noise_gate_db,
                   help=f"when the VAD keeps calling the background speech, count only audio this many dB above "
                        f"it (default {d.noise_gate_db:g}; 0: off)")
    p.add_argument("--talker-drop-db", type=float, default=d.talker_drop_db,
                   help="in such background, also end an utterance at audio this many dB under its own talker "
                        "(fewer requests merged over babble, a few more split; README \"Endpointing in noise\"; "
                        f"default {d.talker_drop_db:g}; 0: off)")
    p.add_argument("--loud-drop-db", type=float, default=d.loud_drop_db,
                   help="in such background, also end an utterance at audio this many dB under its loud part (so "
                        "one that began on a quiet background talker ends after the request; README \"Endpointing "
                        f"in noise\"; default {d.loud_drop_db:g}; 0: off)")
    p.add_argument("--distant-db", type=float, default=d.distant_db,
                   help="in such background, drop an utterance whose loudest frame lies this many dB under the "
                        "talker of the last seconds: background speech, not a request (a 'discarded' event; README "
                        f"\"Endpointing in noise\"; default {d.distant_db:g}; 0: off)")
    p.add_argument("--spectral-gate-db", type=float, default=d.spectral_gate_db,
                   help="in such background, also count only audio this many dB above it on average over 16 "
                        "frequency bands (for steady noise: fans, engines, hiss; lets a crowd through; README "
                        f"\"Endpointing in noise\"; default {d.spectral_gate_db:g}: off)")
    p.add_argument("--faint-range-db", type=float, default=d.faint_range_db,
                   help="the gates also engage in a background at least this many dB under the talker that the "
                        "VAD takes for speech without saturating (a TV in the next room, quiet music; README "
                        f"\"Endpointing in noise\"; default {d.faint_range_db:g}; 0: only in saturating background)")
    p.add_argument("--max-utterance-s", type=float, default=d.max_utterance_s, help="forced cut (<= 30)")
    p.add_argument("--no-speculative", action="store_true", help="wait for the endpoint before any work")
    p.add_argument("--barge-in", dest="barge_in", action="store_true", default=None,
                   help="speech during an answer cancels it (default for the microphone and serve)")
    p.add_argument("--barge-in-ms", type=int, default=AssistantOptions.barge_in_ms,
                   help="voiced audio that makes speech a barge-in (default %(default)s; shorter: a backchannel)")
    p.add_argument("--no-barge-in", dest="barge_in", action="store_false",
                   help="answer every utterance in full (default for files and stdin)")
    p.add_argument("--no-resume", action="store_true",
                   help="an answer stopped by barge-in stays stopped, even when the interruption was background "
                        "speech or only a backchannel (\"mhm\", \"okay\"); by default it goes on (a 'resumed' event)")
    p.add_argument("--answer-fillers", action="store_true",
                   help="answer utterances with no words or only hums (\"um\", \"hmm\") too; by default they are "
                        "dropped (a 'discarded' event, reason 'filler')")
    p.add_argument("--max-waiting", type=int, default=AssistantOptions.max_waiting,
                   help="requests that may wait while another is answered; one more skips the oldest waiting one "
                        "(a 'skipped' event), so answers stay current on a slow machine (default 0: no limit)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="start listening at once; the first request then pays the model's first-call costs")


def _cmd_listen(args: argparse.Namespace) -> int:
    from desta_edge.runtime.audio import AudioError

    from . import sources

    if args.list_devices:
        try:
            devices = sources.list_devices()
        except RuntimeError as e:
            return _fail(str(e), 1)
        if args.json:
            print(json.dumps({"devices": devices}))
        else:
            for d in devices:
                print(f"{d['index']:3}  {d['name']}  ({d['inputs']} ch, {d['default_rate']:.0f} Hz)")
        return 0
    try:
        endpoint, opts = _options(args, live=args.source == "mic",
                                  fast_file=args.source not in ("mic", "-") and args.realtime is False)
        mic = None
        if args.source == "-":
            chunks = sources.pcm_source(sys.stdin.buffer, rate=args.rate, channels=args.channels,
                                        reference_channel=args.reference_channel)
        elif args.source == "mic":
            device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
            mic = sources.MicSource(sources.MicOptions(device=device, reference_channel=args.reference_channel))
            chunks = mic.chunks()
        else:
            chunks = sources.file_source(args.source, reference_channel=args.reference_channel)
            if args.realtime is not False:
                chunks = sources.paced(chunks)
    except (AudioError, ValueError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:  # the speech detector, sounddevice or PortAudio missing
        return _fail(str(e), 1)

    model = _load_model(args, progress=not args.json)
    if isinstance(model, int):
        return model
    show = _json_line if args.json else _Display(live=args.source in ("mic", "-") or args.realtime is not False)
    assistant = Assistant(model, opts, endpoint, emit=show)
    if not args.no_warm_up:  # before the source opens: the first request then waits no longer than the rest
        warm_up_ms = assistant.warm_up()
        if args.json:
            _json_line({"type": "ready", "audio_s": 0.0, "wall_s": 0.0, "warm_up_ms": warm_up_ms})
        else:
            print(f"warmed up in {warm_up_ms / 1000:.1f} s", file=sys.stderr)
    heard_from = f"microphone {mic.description}" if mic is not None else args.source
    if not args.json:
        print(f"listening ({heard_from}); Ctrl-C to stop", file=sys.stderr)
    try:  # from here on, an interrupt ends with the summary
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `systemctl stop`, `kill`: as Ctrl-C
        notify_systemd(f"READY=1\nSTATUS=listening ({heard_from})")
        assistant.run(chunks)
    except KeyboardInterrupt:
        pass  # the summary of what was heard so far follows
    except (AudioError, RuntimeError) as e:
        return _fail(str(e), 1)
    summary = assistant.summary()
    if mic is not None:  # audio the driver or this reader lost, and device dropouts
        summary.update(input_overflows=mic.overflows, dropped_samples=mic.ring.dropped, device_reopens=mic.reopens,
                       input_latency_ms=None if mic.input_latency_s is None else round(mic.input_latency_s * 1000, 1))
    if args.json:
        print(json.dumps({"type": "summary", **summary}))
    else:
        print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()), file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    server_log.setLevel(logging.INFO)  # a daemon's log: clients connecting, refused and leaving
    try:
        require_websockets()  # before the slow model load
        server_opts = ServerOptions(host=args.host, port=args.port, idle_timeout_s=args.idle_timeout_s)
        endpoint, opts = _options(args, live=True, fast_file=False)
    except ValueError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    model = _load_model(args, progress=True)
    if isinstance(model, int):
        return model
    ready = {}
    if not args.no_warm_up:  # once, before the first client: every session's first request is then warm
        ready["warm_up_ms"] = Assistant(model, opts, endpoint).warm_up()
        print(f"warmed up in {ready['warm_up_ms'] / 1000:.1f} s", file=sys.stderr)
    server = Server(model, opts, endpoint, server_opts, ready=ready)

    def listening(port: int) -> None:
        url = f"ws://{args.host}:{port}/"
        print(f"serving on {url}?rate=16000&channels=1 (s16le PCM in, JSON events out; health: "
              f"http://{args.host}:{port}/health); Ctrl-C to stop", file=sys.stderr, flush=True)
        notify_systemd(f"READY=1\nSTATUS=serving on {url}")

    signal.signal(signal.SIGTERM, lambda *_: server.stop())  # `systemctl stop`, `kill`: close clients, exit 0
    try:
        server.serve_forever(listening)
    except KeyboardInterrupt:
        pass
    except OSError as e:  # the port is taken, or the address is not this machine's
        return _fail(f"cannot serve on {args.host}:{args.port}: {e}", 1)
    finally:
        notify_systemd("STOPPING=1")
    print(f"served {server.sessions} session(s)", file=sys.stderr)
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    try:
        opts = ApiOptions(host=args.host, port=args.port, model_id=args.model_id or args.model, system=args.system,
                          prompt=args.prompt, max_new_tokens=args.max_new_tokens, max_queue=args.max_queue,
                          max_batch=args.max_batch)
    except ValueError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    model = _load_model(args, progress=True)
    if isinstance(model, int):
        return model
    if not args.no_warm_up:
        print(f"warmed up in {model.warm_up() / 1000:.1f} s", file=sys.stderr)
    try:
        api = Api(model, opts)
    except OSError as e:  # the port is taken, or the address is not this machine's
        return _fail(f"cannot serve on {args.host}:{args.port}: {e}", 1)
    api_log.setLevel(logging.INFO)  # a daemon's log: one line a request
    # `systemctl stop`, `kill`: stop from another thread (shutting down waits for this one's loop)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=api.stop, daemon=True).start())
    url = f"http://{args.host}:{api.port}"
    print(f"serving {opts.model_id!r} on {url}/v1/chat/completions (OpenAI-style, audio as input_audio parts; "
          f"health: {url}/health); Ctrl-C to stop", file=sys.stderr, flush=True)
    notify_systemd(f"READY=1\nSTATUS=serving on {url}")
    try:
        api.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        notify_systemd("STOPPING=1")
    print(f"answered {api.requests} request(s)", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace, *, live: bool, fast_file: bool) -> tuple[EndpointOptions, AssistantOptions]:
    """Endpointing and assistant options from the shared flags. live: the talker hears the answers
    (barge-in by default, backchannels over an answer not answered);
    fast_file: a file fed as fast as possible, where segmentation must not depend on machine speed."""
    endpoint = EndpointOptions(
        detector=args.vad, silero_threshold=args.silero_threshold, silero_gain_db=args.silero_gain_db,
        aggressiveness=args.vad_aggressiveness,
        frame_ms=args.frame_ms, pre_roll_ms=args.pre_roll_ms, pause_ms=args.pause_ms,
        hangover_ms=args.hangover_ms, min_speech_ms=args.min_speech_ms, turn_end_ms=args.turn_end_ms,
        max_utterance_s=args.max_utterance_s, noise_gate_db=args.noise_gate_db, talker_drop_db=args.talker_drop_db,
        loud_drop_db=args.loud_drop_db, distant_db=args.distant_db, spectral_gate_db=args.spectral_gate_db,
        faint_range_db=args.faint_range_db,
    )
    Endpointer(endpoint)  # loads the speech detector now (read once per process), not after the model
    opts = AssistantOptions(system=args.system, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                            speculative=not args.no_speculative, turn_detection=not args.no_turn_detection,
                            turn_threshold=args.turn_threshold, wait_for_turn_verdict=fast_file,
                            barge_in=args.barge_in if args.barge_in is not None else live,
                            # `--barge-in` says the talker hears the answers too (a live stream on stdin)
                            talker_hears_answers=live or args.barge_in is True,
                            barge_in_ms=args.barge_in_ms, resume_false_interruptions=not args.no_resume,
                            drop_fillers=not args.answer_fillers, max_waiting=args.max_waiting,
                            # serve's playback options (listen hears no playback reports)
                            half_duplex=getattr(args, "half_duplex", False),
                            echo_guard=not getattr(args, "no_echo_guard", False),
                            echo_tail_ms=getattr(args, "echo_tail_ms", AssistantOptions.echo_tail_ms))
    return endpoint, opts


def _load_model(args: argparse.Namespace, *, progress: bool):
    """The model the flags name, or the exit code of a failure (reported on stderr)."""
    from desta_edge import DestaModel

    try:
        model = DestaModel.from_pretrained(args.model, backend=args.backend, device=args.model_device,
                                           progress=progress, ort_provider=args.ort_provider,
                                           whisper_dtype=whisper_dtype(args), encoder_padding_s=args.encoder_padding_s)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except RuntimeError as e:
        return _fail(str(e), 1)
    if args.backend == "auto":  # stderr, so that --json keeps stdout to events
        print(f"backend: {model.backend_name} ({model.backend_detail}); {model.backend_reason}", file=sys.stderr)
    return model


def _json_line(event: dict) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


class _Display:
    """A readable live view: what was heard, the streamed answer, its latency.

    live: audio arrives in real time (microphone, stdin, a paced file), so the time from the end
    of speech to the first token is what a person waits. A file fed with --fast runs ahead of
    the clock and answers queue behind each other: only the compute stages mean something then.
    """

    def __init__(self, live: bool = True) -> None:
        self.live = live
        self._ends: dict[int, str] = {}  # utterance -> why it ended

    def __call__(self, e: dict) -> None:
        kind = e["type"]
        if kind == "speech_start":
            print(f"\n[{e['audio_s']:7.2f}s] ● speech", file=sys.stderr, flush=True)
        elif kind == "speech_end":
            self._ends[e["utterance"]] = e["reason"]
        elif kind == "transcript":
            print(f"you: {e['text']}", flush=True)
            print("assistant: ", end="", flush=True)
        elif kind == "token":
            print(e["text"], end="", flush=True)
        elif kind == "answer":
            t = e["timings_ms"]
            print(flush=True)
            if self.live:
                line = f"first token {t['first_token']:.0f} ms after you stopped; endpoint wait {t['endpoint_wait']:.0f} ms"
                if self._ends.pop(e["utterance"], None) == "turn_complete":
                    line += ", a finished request"
            else:
                line = f"compute: encoder {t['encoder']:.0f} ms, ASR {t['asr']:.0f} ms, prefill {t['prefill']:.0f} ms"
            print(f"  ({line})", file=sys.stderr, flush=True)
        elif kind == "cancelled":
            print(" [interrupted]", flush=True)
        elif kind == "resumed":  # the interruption was not a request: the same answer goes on
            print(f"assistant (going on): {e['text']}", end="", flush=True)
        elif kind == "discarded":  # heard, not answered: say why, so a person is not left wondering
            if e["reason"] in ("backchannel", "filler", "echo"):
                heard = e["transcript"].strip() or "(no words)"
                what = "the echo of an answer" if e["reason"] == "echo" else f"a {e['reason']}"
                print(f"you: {heard} ({what}, not a request)", flush=True)
            else:
                why = (f"{e['voiced_ms']} ms of speech, too short for a request" if e["reason"] == "short"
                       else "background speech, far under the talker")
                print(f"  (ignored: {why})", file=sys.stderr, flush=True)
        elif kind == "skipped":
            print(f"\n[{e['audio_s']:7.2f}s] request {e['utterance']} skipped unanswered: newer requests were "
                  f"waiting (--max-waiting {e['waiting']})", file=sys.stderr, flush=True)
        elif kind == "error":
            print(f"\nerror on utterance {e.get('utterance')}: {e['message']}", file=sys.stderr, flush=True)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code

"""Stream an audio file or a microphone to `desta-edge serve` and print its events, one JSON object per line.

    python examples/ws_client.py recording.wav [--url ws://127.0.0.1:8765] [--fast] [--prompt TEXT] [--system TEXT]
    python examples/ws_client.py --mic [DEVICE] [--seconds S] [--url ...]      # Ctrl-C to stop

A file is sent as s16le PCM at its own rate and channel count (the server resamples), in 20 ms
messages at real-time pace (as a microphone would deliver it), or as fast as the socket takes it
with --fast; it asks for `barge_in=0`: in a recording, each next question would otherwise cancel
the answer to the one before. With --mic, this machine's microphone (a name or index from
`python -m sounddevice`; default: the system's) is streamed live with barge-in on, e.g. from a
robot's small computer to a GPU machine that runs `serve --host 0.0.0.0`. --prompt and --system
replace the server's for this client.

Needs `websockets`, `soundfile` and, for --mic, `sounddevice` (with PortAudio); nothing of
desta-edge itself.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from urllib.parse import urlencode

import numpy as np
from websockets.sync.client import connect

BLOCK_S = 0.02  # audio per message
MIC_RATE = 16000  # asked of the microphone first; else its own default rate (the server resamples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audio", nargs="?", help="an audio file (or --mic)")
    p.add_argument("--mic", nargs="?", const="", metavar="DEVICE", help="stream a microphone instead of a file")
    p.add_argument("--seconds", type=float, default=None, help="with --mic: stop after this long")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--fast", action="store_true", help="send a file as fast as possible instead of at real-time pace")
    p.add_argument("--prompt", help="the instruction after each utterance (default: the server's)")
    p.add_argument("--system", help="the system message (default: the server's)")
    args = p.parse_args()
    if (args.audio is None) == (args.mic is None):
        p.error("give an audio file or --mic")
    texts = {k: v for k, v in (("prompt", args.prompt), ("system", args.system)) if v is not None}
    if args.mic is not None:
        stream_microphone(args.url, args.mic or None, args.seconds, texts)
    else:
        stream_file(args.url, args.audio, args.fast, texts)


def session(url: str, query: dict):
    """Connect and print every event from a thread until the summary; returns (socket, thread)."""
    ws = connect(f"{url}/?{urlencode(query)}", max_size=None)

    def receive() -> None:
        for message in ws:
            print(message, flush=True)
            if json.loads(message)["type"] == "summary":
                return

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    return ws, reader


def finish(ws, reader) -> None:
    ws.send(json.dumps({"type": "end"}))  # pending answers come, then the summary
    reader.join()
    ws.close()


def stream_file(url: str, path: str, fast: bool, texts: dict) -> None:
    import soundfile as sf

    x, rate = sf.read(path, dtype="float32", always_2d=True)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    step = int(rate * BLOCK_S)
    ws, reader = session(url, {"rate": rate, "channels": x.shape[1], "barge_in": 0, **texts})
    t0 = time.monotonic()
    for i in range(0, len(pcm), step):
        if not fast:
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        ws.send(pcm[i : i + step].tobytes())
    finish(ws, reader)


def stream_microphone(url: str, device: str | None, seconds: float | None, texts: dict) -> None:
    import sounddevice as sd

    if device is not None and device.isdigit():
        device = int(device)
    try:
        sd.check_input_settings(device=device, samplerate=MIC_RATE, channels=1, dtype="float32")
        rate = MIC_RATE
    except sd.PortAudioError:
        rate = int(sd.query_devices(device, "input")["default_samplerate"])
    blocks: queue.Queue[bytes] = queue.Queue(maxsize=int(10 / BLOCK_S))  # 10 s; more means the socket stalled
    lost = {"overflows": 0, "blocks": 0}

    def captured(indata, frames, time_info, status) -> None:  # PortAudio's thread: copy and return
        if status.input_overflow:
            lost["overflows"] += 1
        try:
            blocks.put_nowait(bytes(indata))
        except queue.Full:
            lost["blocks"] += 1

    ws, reader = session(url, {"rate": rate, "channels": 1, **texts})
    stop_at = None if seconds is None else time.monotonic() + seconds
    try:
        with sd.InputStream(device=device, samplerate=rate, channels=1, dtype="float32",
                            blocksize=int(rate * BLOCK_S), callback=captured):
            while stop_at is None or time.monotonic() < stop_at:
                try:
                    block = np.frombuffer(blocks.get(timeout=0.5), dtype="<f4")
                except queue.Empty:
                    continue
                ws.send((np.clip(block, -1, 1) * 32767).astype("<i2").tobytes())
    except KeyboardInterrupt:
        pass
    finally:
        finish(ws, reader)
        if lost["overflows"] or lost["blocks"]:
            print(json.dumps({"type": "client_losses", **lost}), flush=True)


if __name__ == "__main__":
    main()

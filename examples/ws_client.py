"""Stream an audio file to `desta-edge serve` and print its events, one JSON object per line.

    python examples/ws_client.py recording.wav [--url ws://127.0.0.1:8765] [--fast] [--prompt TEXT] [--system TEXT]

The file is sent as s16le PCM at its own rate and channel count (the server resamples), in 20 ms
messages at real-time pace (as a microphone would deliver it), or as fast as the socket takes it
with --fast. It asks for `barge_in=0`: in a recording, each next question would otherwise cancel
the answer to the one before. --prompt and --system replace the server's for this client. Needs `websockets` and `soundfile` (both installed with
`pip install "desta-edge[server]"`).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from urllib.parse import urlencode

import numpy as np
import soundfile as sf
from websockets.sync.client import connect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audio")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--fast", action="store_true", help="send as fast as possible instead of at real-time pace")
    p.add_argument("--prompt", help="the instruction after each utterance (default: the server's)")
    p.add_argument("--system", help="the system message (default: the server's)")
    args = p.parse_args()
    x, rate = sf.read(args.audio, dtype="float32", always_2d=True)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    step = rate // 50
    query = {"rate": rate, "channels": x.shape[1], "barge_in": 0}
    query.update({k: v for k, v in (("prompt", args.prompt), ("system", args.system)) if v is not None})
    with connect(f"{args.url}/?{urlencode(query)}", max_size=None) as ws:

        def receive() -> None:
            for message in ws:
                print(message, flush=True)
                if json.loads(message)["type"] == "summary":
                    return

        reader = threading.Thread(target=receive)
        reader.start()
        t0 = time.monotonic()
        for i in range(0, len(pcm), step):
            if not args.fast:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            ws.send(pcm[i : i + step].tobytes())
        ws.send(json.dumps({"type": "end"}))
        reader.join()


if __name__ == "__main__":
    main()

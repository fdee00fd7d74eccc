"""Requests per minute of `desta-edge api` with several clients at once: batched against one at a time.

    python benchmarks/api_batching.py [--model tiny] [--clients 8] [--rounds 2] [--batches 1,8]
                                      [--max-new-tokens 32] [--out benchmarks/results] [--json]

The ten spoken questions of `latency.py`, as base64 WAVs in chat completions, are posted by
`--clients` threads at once (each client posts its share of `rounds` x 10 requests one after the
other), over real HTTP on localhost, to one in-process server per `--max-batch` setting, on the
same loaded model. Variants alternate round by round, so that the machine's drift falls on all of
them. Reported per variant: requests per minute, p50 and p90 time per request (queueing
included), the batch sizes that ran, and whether every answer equals the one-at-a-time variant's
(greedy; batches are left-padded). JSON and markdown go to --out. A measurement, not a pass/fail
test.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recording import question_clips  # noqa: E402
from report import machine, write_results  # noqa: E402

from desta_edge import DestaModel  # noqa: E402
from desta_edge.streaming.openai_api import Api, ApiOptions  # noqa: E402


def post(port: int, body: dict) -> tuple[float, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as r:
        answer = json.loads(r.read())["choices"][0]["message"]["content"]
    return time.perf_counter() - t, answer


def one_round(port: int, bodies: list[dict], clients: int) -> tuple[float, list[float], list[str]]:
    """All `bodies` posted by `clients` threads; wall seconds, per-request seconds, answers in order."""
    times, answers = [0.0] * len(bodies), [""] * len(bodies)

    def client(k: int) -> None:
        for i in range(k, len(bodies), clients):
            times[i], answers[i] = post(port, bodies[i])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, times, answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", default="1,8", help="the --max-batch settings compared (the first is the reference)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    clips = question_clips(args.out / "backend_clips")
    bodies = [{"model": args.model, "max_tokens": args.max_new_tokens, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(c.path.read_bytes()).decode(),
                                                "format": "wav"}}]}]} for c in clips]
    model = DestaModel.from_pretrained(args.model, progress=False)
    model.warm_up()
    batches = [int(b) for b in args.batches.split(",")]
    apis = {b: Api(model, ApiOptions(port=0, max_new_tokens=args.max_new_tokens, max_queue=args.clients, max_batch=b))
            for b in batches}
    for api in apis.values():
        api.start()
    runs = {b: {"wall_s": 0.0, "times": [], "answers": []} for b in batches}
    for r in range(args.rounds):
        for b in batches:
            wall, times, answers = one_round(apis[b].port, bodies, args.clients)
            runs[b]["wall_s"] += wall
            runs[b]["times"] += times
            runs[b]["answers"] += answers
            print(f"round {r + 1}/{args.rounds}, max_batch {b}: {len(bodies)} requests in {wall:.1f} s",
                  file=sys.stderr, flush=True)
    reference = runs[batches[0]]
    rows = []
    for b in batches:
        run, api = runs[b], apis[b]
        per_min = len(run["times"]) / run["wall_s"] * 60
        rows.append({"max_batch": b, "requests": len(run["times"]), "requests_per_min": round(per_min, 1),
                     "p50_s": round(float(np.percentile(run["times"], 50)), 2),
                     "p90_s": round(float(np.percentile(run["times"], 90)), 2),
                     "batch_sizes": api.health()["batches"],
                     "same_answers": sum(a == r for a, r in zip(run["answers"], reference["answers"])),
                     "speed_up": round(per_min / (len(reference["times"]) / reference["wall_s"] * 60), 2)})
        api.stop()
    result = {"machine": machine(), "model": args.model, "clients": args.clients, "rounds": args.rounds,
              "max_new_tokens": args.max_new_tokens, "variants": rows}
    table = "\n".join([
        f"`desta-edge api`, {args.clients} clients at once, {len(bodies)} spoken questions x {args.rounds} rounds, "
        f"{args.max_new_tokens} tokens at most ({machine()})", "",
        "| max_batch | requests/min | speed-up | p50 s | p90 s | batch sizes run | answers equal to one at a time |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['max_batch']} | {r['requests_per_min']} | {r['speed_up']}× | {r['p50_s']} | {r['p90_s']} | "
          f"{', '.join(f'{k}: {v}' for k, v in r['batch_sizes'].items())} | {r['same_answers']}/{r['requests']} |"
          for r in rows)])
    write_results(args.out, "api_batching", result, table, as_json=args.json)


if __name__ == "__main__":
    main()

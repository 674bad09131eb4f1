#!/usr/bin/env python3
"""The benchmark's flight rows: what concurrent identical misses cost.

  flight.py coalesce --mock URL --relays URL[,URL...] [--askers 40] [--delay-ms 1000]
      Sends one new question from --askers threads at once, spread
      round-robin over the relays, against a mock upstream that takes
      --delay-ms to answer; prints the upstream calls it made (from the
      mock's /__mock/stats) and the answers' statuses, as JSON.

  flight.py first-byte --leader URL --follower URL [--runs 5]
      Per run: a new streamed question (20 events, 50 ms apart) sent to
      --leader; as soon as its first byte arrives, the same question is
      sent to --follower. Prints, as JSON, the follower's first byte after
      the leader's (ms), and how much later than the leader the follower
      got the stream's last byte (ms), for every run.

Standard library only: the benchmark installs nothing for it.
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse
import uuid

API_KEY = "bench-key"
EVENT_DELAY_MS = 50
# 15 text deltas of 400 characters plus the 5 framing events: 20 events.
ANSWER_BYTES = 6000


def question(stream: bool) -> bytes:
    return json.dumps(
        {
            "model": "bench-model",
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": f"flight {uuid.uuid4()}"}],
        }
    ).encode()


def connect(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def post(url: str, body: bytes, headers: dict) -> http.client.HTTPResponse:
    conn = connect(url)
    conn.request(
        "POST",
        "/v1/messages",
        body=body,
        headers={
            "x-api-key": API_KEY,
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
            **headers,
        },
    )
    return conn.getresponse()


def mock_calls(mock: str) -> int:
    """Calls the mock answered before this one (its stats request counts
    as a call too, so the next reading includes this one)."""
    conn = connect(mock)
    conn.request("GET", "/__mock/stats")
    return json.loads(conn.getresponse().read())["calls"]


def coalesce(args) -> dict:
    relays = args.relays.split(",")
    body = question(stream=False)
    start = threading.Barrier(args.askers)
    statuses = [None] * args.askers

    def ask(i):
        start.wait()
        response = post(relays[i % len(relays)], body, {"x-mock-delay-ms": str(args.delay_ms)})
        response.read()
        statuses[i] = (response.status, response.getheader("x-relaycache-status"))

    before = mock_calls(args.mock)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(args.askers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Less the first stats request itself.
    calls = mock_calls(args.mock) - before - 1
    return {
        "askers": args.askers,
        "relays": len(relays),
        "upstream_calls": calls,
        "ok": sum(1 for s in statuses if s and s[0] == 200),
        "misses": sum(1 for s in statuses if s and s[1] == "miss"),
    }


def read_stream(response) -> tuple:
    """(first byte time, last byte time) of a streamed answer."""
    first = None
    while True:
        chunk = response.read1(65536)
        if not chunk:
            return first, time.perf_counter()
        if first is None:
            first = time.perf_counter()


def first_byte(args) -> dict:
    headers = {
        "x-mock-event-delay-ms": str(EVENT_DELAY_MS),
        "x-mock-answer-bytes": str(ANSWER_BYTES),
    }
    first_delays, last_delays, statuses = [], [], []
    for _ in range(args.runs):
        body = question(stream=True)
        leader = post(args.leader, body, headers)
        leader_first = None
        first_chunk = leader.read1(65536)
        leader_first = time.perf_counter()
        assert first_chunk, "the leader's stream is empty"
        follower = post(args.follower, body, headers)
        follower_first, follower_last = read_stream(follower)
        _, leader_last = read_stream(leader)
        statuses.append(follower.getheader("x-relaycache-status"))
        first_delays.append((follower_first - leader_first) * 1000)
        last_delays.append((follower_last - leader_last) * 1000)
    return {
        "runs": args.runs,
        "events": 20,
        "event_gap_ms": EVENT_DELAY_MS,
        "follower_status": statuses,
        "first_byte_after_leader_ms": [round(d, 2) for d in first_delays],
        "last_byte_after_leader_ms": [round(d, 2) for d in last_delays],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("coalesce")
    c.add_argument("--mock", required=True)
    c.add_argument("--relays", required=True)
    c.add_argument("--askers", type=int, default=40)
    c.add_argument("--delay-ms", type=int, default=1000)
    f = sub.add_parser("first-byte")
    f.add_argument("--leader", required=True)
    f.add_argument("--follower", required=True)
    f.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    result = coalesce(args) if args.what == "coalesce" else first_byte(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

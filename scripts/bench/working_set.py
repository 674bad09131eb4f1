#!/usr/bin/env python3
"""One pass over a working set of stored answers, for `make bench`'s
rolling-restart row: POSTs the request template with its @TAG@ replaced by
RUN-1 .. RUN-KEYS to URL over one keep-alive connection and prints
"HITS TOTAL ERRORS", where a hit is an answer with x-relaycache-status: hit.
A connection that breaks (the process behind URL never restarts here, but a
member behind it may) is opened again and the request counted as an error.

Usage: working_set.py URL TEMPLATE_FILE RUN KEYS API_KEY
"""
import http.client
import sys
import urllib.parse


def main() -> int:
    url, template_file, run, keys, api_key = sys.argv[1:6]
    target = urllib.parse.urlsplit(url)
    with open(template_file, encoding="utf-8") as f:
        template = f.read()
    if "@TAG@" not in template:
        print(f"no @TAG@ in {template_file}", file=sys.stderr)
        return 2
    headers = {
        "x-api-key": api_key,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    hits = errors = 0
    total = int(keys)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    for i in range(1, total + 1):
        body = template.replace("@TAG@", f"{run}-{i}").encode()
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            reply = conn.getresponse()
            reply.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            continue
        if reply.status != 200:
            errors += 1
        elif reply.getheader("x-relaycache-status") == "hit":
            hits += 1
    print(hits, total, errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())

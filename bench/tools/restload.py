#!/usr/bin/env python3
"""Drives lanyard's REST API over its unix socket with a few keep-alive
connections in parallel, and reports how long the requests took.

    restload.py SOCKET networks COUNT [--concurrency C] [--deadline S]
    restload.py SOCKET ports COUNT --nets N [--concurrency C] [--deadline S]
    restload.py SOCKET batch COUNT --nets N [--chunk K] [--concurrency C] [--deadline S]

networks: POST /v1/networks n000..n{COUNT-1}, nat, 10.{100+i//256}.{i%256}.0/24
ports:    POST /v1/ports, tap ports spread round-robin over n000..n{N-1},
          VM names vm00000.. (one port per VM)
batch:    the same ports through POST /v1/ports/batch, K ports per request
          (default: one request per network)

Prints one JSON object: done, failed, seconds, the first errors, the
elapsed time at every 10% of COUNT (to see whether the cost per request grows
with the state already there), and request latency percentiles (p50, p99,
max, in ms). --first N numbers ports and VMs from N (for a second run
against the same daemon). Stops at --deadline seconds (bounded run).
"""
import argparse
import http.client
import json
import socket
import sys
import threading
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("what", choices=["networks", "ports", "batch"])
    ap.add_argument("count", type=int)
    ap.add_argument("--nets", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=600)
    ap.add_argument("--first", type=int, default=0)
    a = ap.parse_args()

    lock = threading.Lock()
    state = {"next": 0, "done": 0, "failed": 0, "errors": [], "marks": {}, "latencies": []}
    step = max(1, a.count // 10)
    t0 = time.monotonic()

    def port(i):
        i += a.first
        return {"net": f"n{i % a.nets:03d}", "vm": f"vm{i:05d}", "type": "tap"}

    chunk = a.chunk or max(1, a.count // a.nets)
    # batch: request k holds ports k*chunk.., all of one network when chunk
    # is count/nets (port i goes to network i % nets: pick i = net + nets*j).
    requests = a.count if a.what != "batch" else (a.count + chunk - 1) // chunk
    per_request = 1 if a.what != "batch" else chunk

    def body(i):
        if a.what == "batch":
            if chunk * a.nets == a.count:
                return "/v1/ports/batch", [port(i + a.nets * j) for j in range(chunk)]
            return "/v1/ports/batch", [port(k) for k in range(i * chunk, min(a.count, (i + 1) * chunk))]
        if a.what == "networks":
            return "/v1/networks", {
                "name": f"n{i:03d}",
                "mode": "nat",
                "subnet": f"10.{100 + i // 256}.{i % 256}.0/24",
            }
        return "/v1/ports", port(i)

    def worker():
        conn = UnixConnection(a.socket)
        while True:
            with lock:
                i = state["next"]
                if i >= requests or time.monotonic() - t0 > a.deadline:
                    break
                state["next"] += 1
            path, doc = body(i)
            data = json.dumps(doc)
            started = time.monotonic()
            try:
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                text = r.read()
                ok = r.status in (200, 201)
                took = time.monotonic() - started
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                took = None
                ok, text = False, str(e).encode()
                conn.close()
                conn = UnixConnection(a.socket)
            with lock:
                if took is not None:
                    state["latencies"].append(took)
                if ok:
                    before = state["done"]
                    state["done"] += len(doc) if a.what == "batch" else 1
                    n = state["done"]
                    if n // step > before // step:
                        state["marks"][n // step * step] = round(time.monotonic() - t0, 3)
                else:
                    state["failed"] += 1
                    if len(state["errors"]) < 5:
                        state["errors"].append(text.decode(errors="replace")[:300])
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(state["latencies"])

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

    out = {
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 3) if lat else None,
        "what": a.what,
        "asked": a.count,
        "done": state["done"],
        "failed": state["failed"],
        "seconds": round(time.monotonic() - t0, 3),
        "deadline_hit": state["next"] < requests,
        "per_request": per_request,
        "marks": state["marks"],
        "errors": state["errors"],
    }
    json.dump(out, sys.stdout)
    print()
    return 0 if state["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Gives every port that has none a floating IP through lanyard's REST API
(one keep-alive connection, one request at a time, as an operator's script
would): POST /v1/fips, then POST /v1/fips/IP/associate. Prints one JSON
object: done, failed, seconds, the first errors, and the latency (ms) of the
last association, the median and p99 of the last 100, and the median of the
first 100 (to see whether an association costs more with more of them).
With --again N, the last floating IP is then disassociated and associated
again N times: the median and p99 of those associations (the cost of the
Nth floating IP, measured more than once).

    fipload.py SOCKET [--deadline S] [--again N]
"""
import argparse
import json
import time

# The same unix-socket connection the other load tool uses (this file's
# directory is on the import path when it is run as a script).
from restload import UnixConnection


def call(conn, method, path, body=None):
    data = None if body is None else json.dumps(body)
    headers = {} if body is None else {"Content-Type": "application/json"}
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    text = r.read()
    return r.status, (json.loads(text) if text else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("--deadline", type=float, default=600)
    ap.add_argument("--again", type=int, default=0)
    a = ap.parse_args()
    conn = UnixConnection(a.socket)
    _, ports = call(conn, "GET", "/v1/ports")
    _, fips = call(conn, "GET", "/v1/fips")
    bound = {f["port"] for f in fips if f.get("port")}
    todo = [p["id"] for p in ports if p["id"] not in bound and p.get("ip")]
    done, failed, errors, lat = 0, 0, [], []
    t0 = time.monotonic()
    for pid in todo:
        if time.monotonic() - t0 > a.deadline:
            break
        st, f = call(conn, "POST", "/v1/fips", {})
        if st != 201:
            failed += 1
            errors.append(f)
            continue
        t = time.monotonic()
        st, v = call(conn, "POST", "/v1/fips/%s/associate" % f["ip"], {"port": pid})
        lat.append((time.monotonic() - t) * 1000)
        if st != 200:
            failed += 1
            errors.append(v)
            continue
        done += 1
        last = (f["ip"], pid)
    seconds = time.monotonic() - t0
    again = []
    for _ in range(a.again if done else 0):
        ip, pid = last
        call(conn, "POST", "/v1/fips/%s/disassociate" % ip, {})
        t = time.monotonic()
        st, v = call(conn, "POST", "/v1/fips/%s/associate" % ip, {"port": pid})
        again.append((time.monotonic() - t) * 1000)
        if st != 200:
            errors.append(v)

    def median(v):
        v = sorted(v)
        return round(v[len(v) // 2], 3) if v else None

    def p99(v):
        v = sorted(v)
        return round(v[min(len(v) - 1, int(len(v) * 0.99))], 3) if v else None

    print(json.dumps({
        "done": done,
        "failed": failed,
        "seconds": round(seconds, 3),
        "errors": errors[:3],
        "last_ms": round(lat[-1], 3) if lat else None,
        "last100_p50_ms": median(lat[-100:]),
        "last100_p99_ms": p99(lat[-100:]),
        "first100_p50_ms": median(lat[:100]),
        "again_p50_ms": median(again),
        "again_p99_ms": p99(again),
    }))


if __name__ == "__main__":
    main()

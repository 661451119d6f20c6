#!/usr/bin/env python3
"""Sends COUNT 64-byte UDP packets to DST:PORT as fast as one core can, each
from another source port (from SRC, which may be any address: a raw socket),
so that every packet is the first of its connection and goes through the
NAT chains (established connections skip them). Prints one JSON object:
sent, seconds.

    flowgen.py SRC DST PORT COUNT
"""
import json
import socket
import struct
import sys
import time


def main():
    src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    payload = b"x" * 36  # 20 IP + 8 UDP + 36 = 64 bytes
    s_ip, d_ip = socket.inet_aton(src), socket.inet_aton(dst)
    packets = []
    for i in range(count):
        sport = 1024 + i % 64000
        udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0) + payload
        # The kernel fills in the IP checksum (and the id when it is 0).
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, s_ip, d_ip)
        packets.append(ip + udp)
    target = (dst, 0)
    sent = 0
    t0 = time.monotonic()
    for p in packets:
        try:
            s.sendto(p, target)
            sent += 1
        except BlockingIOError:
            pass
        except OSError:
            # ENOBUFS under overload: the packet is lost, the run goes on.
            pass
    seconds = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": round(seconds, 4)}))


if __name__ == "__main__":
    main()

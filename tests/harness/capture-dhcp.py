#!/usr/bin/env python3
"""Captures the DHCP requests real firmware sends, as fixtures for the
parser's unit tests: every UDP datagram to port 67 or 4011 seen on any
interface of this namespace (a packet socket, so the agent still gets
them), from a MAC given on the command line, is written as
DIR/<name>-<n>-<type>-<port>.bin (the DHCP payload, nothing else).

usage: capture-dhcp.py DIR SECONDS MAC=NAME [MAC=NAME ...]
Run it beside `cargo test --test proxy_firmware` (as root)."""
import os, socket, struct, sys, time

out, seconds = sys.argv[1], float(sys.argv[2])
names = {bytes.fromhex(m.replace(":", "")): n for m, n in (a.split("=") for a in sys.argv[3:])}
types = {1: "discover", 3: "request", 8: "inform"}
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
sock.settimeout(1.0)
seen, counts = set(), {}
end = time.time() + seconds
while time.time() < end:
    try:
        frame, meta = sock.recvfrom(65535)
    except socket.timeout:
        continue
    if meta[2] == socket.PACKET_OUTGOING or len(frame) < 14 + 20 + 8:
        continue
    if struct.unpack("!H", frame[12:14])[0] != 0x0800:
        continue
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        continue
    udp = 14 + ihl
    dport = struct.unpack("!H", frame[udp + 2 : udp + 4])[0]
    if dport not in (67, 4011):
        continue
    payload = frame[udp + 8 :]
    name = names.get(payload[28:34])
    if name is None or payload in seen:
        continue
    seen.add(payload)
    kind = "other"
    i = 240
    while i + 1 < len(payload) and payload[i] != 255:
        if payload[i] == 0:
            i += 1
            continue
        if payload[i] == 53:
            kind = types.get(payload[i + 2], "other")
        i += 2 + payload[i + 1]
    n = counts.get(name, 0) + 1
    counts[name] = n
    with open(os.path.join(out, f"{name}-{n}-{kind}-{dport}.bin"), "wb") as f:
        f.write(payload)
print(counts)

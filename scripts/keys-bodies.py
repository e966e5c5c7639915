#!/usr/bin/env python3
"""Writes the gRPC-framed request bodies the key benchmarks send with h2load.

Usage: keys-bodies.py <secret> <dir>; writes <dir>/body (sluice.v1
ValidateKeyRequest {key: secret, cost: 1}) and <dir>/check (an
envoy.service.auth.v3 CheckRequest shaped like Envoy's: source and
destination addresses, nine request headers with the key in
`authorization: Bearer`, context_extensions naming the domain `bench`).
Field numbers are those of proto/.
"""
import os
import struct
import sys


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(num, payload):  # length-delimited
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def vfield(num, n):
    return varint(num << 3) + varint(n)


def entry(num, k, v):  # a map<string, string> entry
    return field(num, field(1, k) + field(2, v))


def framed(msg):
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def main():
    secret, out = sys.argv[1], sys.argv[2]
    validate = field(1, secret) + vfield(2, 1)
    headers = {":authority": "api.example.com", ":method": "GET", ":path": "/orders/42",
               ":scheme": "http", "user-agent": "curl/8.5.0", "accept": "*/*",
               "x-forwarded-proto": "http", "x-request-id": "6f1c1c2e-0d0b-4f3c-9c59-2d3c1f6b1a11",
               "authorization": "Bearer " + secret}
    http = (field(1, "11848286445349543421") + field(2, "GET") +
            b"".join(entry(3, k, v) for k, v in headers.items()) +
            field(4, "/orders/42") + field(5, "api.example.com") + field(6, "http") +
            field(10, "HTTP/1.1"))
    # Peer.address.socket_address {address, port_value}
    def sock(port):
        return field(1, field(1, field(2, "127.0.0.1") + vfield(3, port)))
    attrs = (field(1, sock(50412)) + field(2, sock(10000)) + field(4, field(2, http)) +
             entry(10, "sluice.domain", "bench"))
    with open(os.path.join(out, "body"), "wb") as f:
        f.write(framed(validate))
    with open(os.path.join(out, "check"), "wb") as f:
        f.write(framed(field(1, attrs)))


if __name__ == "__main__":
    main()

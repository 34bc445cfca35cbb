"""Sends one h2c request whose head is larger than sluice's limits.max_header_bytes and
prints the status sluice answers it with (or `reset` / `closed`). Run by tests/clients.rs:
python3 oversized_head.py HOST PORT FIELD_BYTES"""

import socket
import sys

import h2.config
import h2.connection
import h2.events

host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.create_connection((host, port), timeout=5)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.local_settings = h2.settings.Settings(client=True)
conn.initiate_connection()
sock.sendall(conn.data_to_send())
# Sent whatever the server's SETTINGS say: sluice must refuse it, not the client library.
conn.max_outbound_frame_size = 16384
headers = [(":method", "GET"), (":path", "/big-head"), (":scheme", "http"), (":authority", "x"), ("x-big", "a" * size)]
conn.send_headers(1, headers, end_stream=True)
sock.sendall(conn.data_to_send())
answer = "closed"
while answer == "closed":
    data = sock.recv(65536)
    if not data:
        break
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            answer = dict(event.headers)[b":status"].decode()
        elif isinstance(event, h2.events.StreamReset):
            answer = "reset"
    sock.sendall(conn.data_to_send())
print(answer)

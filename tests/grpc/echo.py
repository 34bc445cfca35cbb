"""A gRPC service and client for tests/grpc.rs, on grpcio (PyPI), with raw bytes for
messages so that no .proto needs compiling.

    python3 echo.py serve           prints its port, then serves /echo.Echo/* on 127.0.0.1
    python3 echo.py call HOST:PORT  calls each method there, prints one JSON line of results
    python3 echo.py refusals HOST:PORT  calls that sluice refuses or cuts short, likewise

The service: Unary echoes its request (b"fail" is answered UNAVAILABLE, b"slow" after
1 s); ServerStream sends its request's number of messages; ClientStream joins what it
is sent; Bidi echoes each message as it comes; Limited echoes as Unary does; Slow answers
after 1 s. Every answer carries the trailing metadata x-trailer: kept.
"""

import json
import sys
import time
from concurrent import futures

import grpc

TRAILER = (("x-trailer", "kept"),)


def unary(request, context):
    context.set_trailing_metadata(TRAILER)
    if request == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "the service failed it")
    if request == b"slow":
        time.sleep(1)
    return request


def slow(request, context):
    time.sleep(1)
    return request


def server_stream(request, context):
    context.set_trailing_metadata(TRAILER)
    for i in range(int(request)):
        yield b"part %d" % i


def client_stream(requests, context):
    context.set_trailing_metadata(TRAILER)
    return b"+".join(requests)


def bidi(requests, context):
    context.set_trailing_metadata(TRAILER)
    for request in requests:
        yield b"echo " + request


def serve():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Limited": grpc.unary_unary_rpc_method_handler(unary),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def trailer(call):
    return dict(call.trailing_metadata() or ())


def outcome(error):
    return {"code": error.code().name, "details": error.details(), "trailers": trailer(error)}


def call(target):
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    results = {}
    unary_call = channel.unary_unary("/echo.Echo/Unary")
    answer, call = unary_call.with_call(b"hello", timeout=10)
    results["unary"] = {"answer": answer.decode(), "code": call.code().name, "trailers": trailer(call)}
    try:
        unary_call(b"fail", timeout=10)
        results["failed"] = {"code": "OK"}
    except grpc.RpcError as e:
        results["failed"] = outcome(e)
    stream = channel.unary_stream("/echo.Echo/ServerStream")(b"5", timeout=10)
    results["server_stream"] = {"answers": [m.decode() for m in stream], "trailers": trailer(stream)}
    joined, call = channel.stream_unary("/echo.Echo/ClientStream").with_call(iter([b"a", b"b", b"c"]), timeout=10)
    results["client_stream"] = {"answer": joined.decode(), "trailers": trailer(call)}
    bidi_call = channel.stream_stream("/echo.Echo/Bidi")(iter([b"x", b"y"]), timeout=10)
    results["bidi"] = {"answers": [m.decode() for m in bidi_call], "trailers": trailer(bidi_call)}
    print(json.dumps(results), flush=True)


def refusals(target):
    """Limited twice (its quota: one call), Slow with a 300 ms deadline, Unary once more."""
    channel = grpc.insecure_channel(target)
    results = {}
    limited = channel.unary_unary("/echo.Echo/Limited")
    try:
        results["first"] = limited(b"one", timeout=10).decode()
    except grpc.RpcError as e:
        results["first"] = outcome(e)
    try:
        limited(b"two", timeout=10)
        results["refused"] = {"code": "OK"}
    except grpc.RpcError as e:
        results["refused"] = outcome(e)
    start = time.monotonic()
    try:
        channel.unary_unary("/echo.Echo/Slow")(b"late", timeout=0.3)
        results["late"] = {"code": "OK"}
    except grpc.RpcError as e:
        results["late"] = outcome(e) | {"seconds": time.monotonic() - start}
    try:
        results["unary"] = {"code": "OK", "answer": channel.unary_unary("/echo.Echo/Unary")(b"hi", timeout=10).decode()}
    except grpc.RpcError as e:
        results["unary"] = outcome(e)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    {"serve": lambda: serve(), "call": lambda: call(sys.argv[2]), "refusals": lambda: refusals(sys.argv[2])}[sys.argv[1]]()

"""Keep-alive connections between requests: little memory held, nothing lost.

An idle connection gives up its read buffer and the finished request's state while it
waits (transport.server); a request already buffered behind the previous one (pipelining)
must still be answered, and an idle connection must still be usable much later; a client
that pipelines many requests must not hold the process while others wait.
"""

from __future__ import annotations

import socket

from tests.support import Backend, Start, through


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """The bodies of `count` answers with Content-Length, read from one connection."""
    data = b""
    bodies: list[bytes] = []
    while len(bodies) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) >= length:
                bodies.append(rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
    return bodies


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: idle.test\r\n\r\n".encode()


def test_pipelined_requests_are_all_answered(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"".join(request(f"/p{i}") for i in range(5)))
            assert read_answers(s, 5) == [f"GET /p{i}".encode() for i in range(5)]
            s.sendall(request("/after"))  # then idle, then one more
            assert read_answers(s, 1) == [b"GET /after"]


def test_many_idle_connections_are_reused(gogeta: Start) -> None:
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(50)]
        try:
            for i, s in enumerate(socks):
                s.sendall(request(f"/first{i}"))
            for i, s in enumerate(socks):
                assert read_answers(s, 1) == [f"GET /first{i}".encode()]
            for i, s in enumerate(reversed(socks)):  # each idled while the others went
                s.sendall(request(f"/second{i}") + request(f"/third{i}")[:10])
                s.sendall(request(f"/third{i}")[10:])  # a head in two pieces
                assert read_answers(s, 2) == [f"GET /second{i}".encode(), f"GET /third{i}".encode()]
        finally:
            for s in socks:
                s.close()


def read_available(sock: socket.socket) -> bytes:
    """What has already arrived on `sock`, read without blocking."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return data


def test_a_pipelining_client_takes_turns_with_the_others(gogeta: Start) -> None:
    """Between two requests of a connection the others get their turn.

    A request already buffered behind the previous one could be served at once, with no
    wait; a client pipelining hundreds of them would then keep the whole process until
    its last answer (every other connection waiting: the long tail of latency under
    load). Answers served by gogeta itself (`/__gogeta/health`) never wait on a backend,
    so nothing else would let the other connection in.
    """
    with Backend() as backend:
        proxy = through(gogeta, backend.url + "/")
        burst = 400
        with (
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as greedy,
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as other,
        ):
            for s in (greedy, other):  # both connections open and served once
                s.sendall(request("/__gogeta/health"))
                assert len(read_answers(s, 1)) == 1
            greedy.sendall(b"".join(request("/__gogeta/health") for _ in range(burst)))
            data = greedy.recv(65536)  # the burst is being served...
            assert data
            other.sendall(request("/__gogeta/health"))  # ...when another request comes
            assert len(read_answers(other, 1)) == 1
            data += read_available(greedy)
            served_first = data.count(b"HTTP/1.1 200")
            assert served_first < burst // 2, f"{served_first} of {burst} served first"
            while data.count(b"HTTP/1.1 200") < burst:  # and the burst is all answered
                chunk = greedy.recv(65536)
                assert chunk, "connection closed early"
                data += chunk

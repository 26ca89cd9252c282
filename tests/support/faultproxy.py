"""A TCP proxy on 127.0.0.1 that fails connections on purpose, for storage fault tests.

While `down` is set, or for a `fail_ratio` share of connections (seeded), it closes the client
connection at once (curl sees an empty reply); otherwise it forwards bytes both ways. `requests`
logs the request line ("GET /bucket/key?...") of every request forwarded.
"""
from __future__ import annotations

import random
import socket
import threading


class FaultProxy:
    def __init__(self, target_port: int, fail_ratio: float = 0.0, seed: int = 0, poison: bytes | None = None):
        self.target_port = target_port
        self.poison = poison  # a request whose bytes contain this is cut off, every time
        self.poisoned = 0
        self.fail_ratio = fail_ratio
        self.down = False
        self.failed = 0
        self.forwarded = 0
        self.requests: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                fail = self.down or self._rng.random() < self.fail_ratio
                if fail:
                    self.failed += 1
                else:
                    self.forwarded += 1
            if fail:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return

        def pipe(src, dst, inspect=False):
            try:
                while data := src.recv(65536):
                    if inspect and data[:8].split(b" ", 1)[0] in (b"GET", b"PUT", b"HEAD", b"POST", b"DELETE"):
                        with self._lock:
                            self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    if inspect and self.poison and self.poison in data.split(b"\r\n", 1)[0]:  # the request line
                        with self._lock:
                            self.poisoned += 1
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream, inspect=True)

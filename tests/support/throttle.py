"""An HTTP proxy on 127.0.0.1 that answers some requests "429 Too Many Requests" (with a
Retry-After) instead of forwarding them: a PACS that rate-limits, for the DICOMweb tests.

Every `every`-th request is refused (0: none), and with `post_status` every POST is answered
with that status; the others go to the target unchanged (headers, auth and
body) and its answer comes back as it is. `refused` and `forwarded` count them; `paths` lists
the refused request paths, so a test can check each was asked again.
"""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host"}


class ThrottlingProxy:
    def __init__(self, target_port: int, every: int = 4, retry_after: str = "1", post_status: int | None = None):
        self.target_port, self.every, self.retry_after = target_port, every, retry_after
        self.post_status = post_status  # set: every POST (STOW-RS) is answered with this status
        self.refused = self.forwarded = self._n = 0
        self.paths: list[str] = []
        self.forwarded_paths: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy._n += 1
                    refuse = proxy._n % proxy.every == 0 if proxy.every else False
                    (proxy.paths if refuse else proxy.forwarded_paths).append(self.path)
                    if refuse:
                        proxy.refused += 1
                    else:
                        proxy.forwarded += 1
                if self.command == "POST" and proxy.post_status:
                    self.send_response(proxy.post_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if refuse:
                    self.send_response(429)
                    self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "ThrottlingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

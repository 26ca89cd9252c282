"""An HTTP proxy on 127.0.0.1 in front of a real server (Orthanc, moto) that misbehaves on
purpose, for the DICOMweb and storage tests.

- Every `every`-th request is refused (0: none) with `refuse_status` (429 and a Retry-After by
  default; a `refuse_body` such as an S3 error document can go with it).
- `post_status`: every POST (STOW-RS) is answered with that status and an empty body.
- `post_redirect=(status, location)`: every POST is answered with that redirect, as a gateway
  does when a session expired (302 to a login page) or a load balancer moves a service (307).
  A GET of `LOGIN_PATH` is answered by the proxy itself with an HTML page and 200.
- `trickle`: the forwarded answers are sent a byte every `trickle` seconds (a server that
  never quite stops answering).
Every other request goes to the target unchanged (headers, auth and body) and its answer comes
back as it is. `refused` and `forwarded` count them; `paths` lists the refused request paths, so a
test can check each was asked again; `received` counts every request the proxy got.
"""
from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host"}
LOGIN_PATH = "/sso/login"
LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action='/sso/login'>Sign in</form></body></html>"


class ThrottlingProxy:
    def __init__(self, target_port: int, every: int = 4, retry_after: str = "1", post_status: int | None = None,
                 refuse_status: int = 429, refuse_body: bytes = b"",
                 post_redirect: tuple[int, str] | None = None, trickle: float = 0.0):
        self.target_port, self.every, self.retry_after = target_port, every, retry_after
        self.post_status = post_status  # set: every POST (STOW-RS) is answered with this status
        self.refuse_status, self.refuse_body = refuse_status, refuse_body
        self.post_redirect, self.trickle = post_redirect, trickle
        self.refused = self.forwarded = self.received = self._n = 0
        self.paths: list[str] = []
        self.forwarded_paths: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.received += 1
                    if self.command == "GET" and self.path.split("?")[0] == LOGIN_PATH:
                        refuse = False
                    else:
                        proxy._n += 1
                        refuse = proxy._n % proxy.every == 0 if proxy.every else False
                        (proxy.paths if refuse else proxy.forwarded_paths).append(self.path)
                        if refuse:
                            proxy.refused += 1
                        else:
                            proxy.forwarded += 1
                if self.command == "GET" and self.path.split("?")[0] == LOGIN_PATH:
                    return self._reply(200, LOGIN_PAGE, {"Content-Type": "text/html; charset=utf-8"})
                if self.command == "POST" and proxy.post_redirect:
                    status, location = proxy.post_redirect
                    return self._reply(status, b"", {"Location": location})
                if self.command == "POST" and proxy.post_status:
                    return self._reply(proxy.post_status)
                if refuse:
                    extra = {"Retry-After": proxy.retry_after} if proxy.refuse_status in (429, 503) else {}
                    if proxy.refuse_body:
                        extra["Content-Type"] = "application/xml"
                    return self._reply(proxy.refuse_status, proxy.refuse_body, extra)
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
                if self.command == "HEAD":
                    pass
                elif proxy.trickle:
                    try:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(proxy.trickle)
                    except OSError:  # the client gave up: that is the point
                        pass
                else:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThrottlingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A DICOMweb server's answers, read within budgets: the bytes, the time, the parts, the UIDs.

A server's answer is input like any file: it may be huge, endless, slow, gzip-encoded, a login
page, or name other objects than those asked for. Everything here reads it as a stream and stops
at the first budget it breaks:

- `fetch(session, url, ...)` is one request: redirects are never followed (a redirect is an
  error that names its status and where it pointed, without the query or any credentials), the
  answer is refused past `limit` decoded bytes while it streams, and a request that has not
  finished by its deadline (`DEADLINE_SECONDS`, the whole request: a server that sends a byte now
  and then fails then, not never) is cut off.
- `read_all` reads a whole (small) answer; `iter_parts` splits a multipart/related answer as it
  arrives and refuses a part over `max_part` bytes before it is complete.
- `acknowledged` reads a STOW-RS answer (DICOM JSON or XML, PS3.18 10.5.3): the SOP Instance
  UIDs the server says it stored, and the reasons of those it refused.
- `check_uid` refuses a value that is not a UID (PS3.5 9.1) before it goes into a URL.
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree

from unet_core.errors import ResourceLimitError, StorageError

TIMEOUT = (10.0, 120.0)  # connect, and each read: a server that stops answering is an error, never a hang
DEADLINE_SECONDS = float(os.environ.get("UNET_DICOMWEB_DEADLINE", "900"))  # one whole request
MAX_PART_HEADERS = 64 * 2**10  # a part's headers, or the preamble before the first part
CHUNK = 2**16

# PS3.5 9.1: components of digits without leading zeros ("0" itself is one), dots between, at most 64.
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: object, service: str, what: str) -> str:
    """`value` if it is a UID; else an error naming the service and what it answered, never the
    value (it goes nowhere: not into a URL, not into a message)."""
    if not isinstance(value, str) or not is_uid(value):
        raise StorageError(f"{service}: the DICOMweb server answered a {what} that is not a DICOM UID (digits and "
                           "dots, at most 64 characters; PS3.5 9.1): refused, nothing is asked with it", uri=service)
    return value


def where(url: str) -> str:
    """A URL as an error may show it: scheme, host, port and path; no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _late(uri: str, seconds: float) -> StorageError:
    return StorageError(f"{uri}: the DICOMweb server did not finish its answer within {seconds:g} s "
                        "(UNET_DICOMWEB_DEADLINE)", uri=uri)


_current = threading.local()  # the watch of the request this thread is making


class _Watch:
    """Cuts a request's connection at its deadline (a socket timeout bounds one read only). The
    connection's socket is attached as soon as it is used (`watched_adapter`), so a server that
    trickles its status line or headers is cut too, not only one that trickles its body."""

    def __init__(self, seconds: float):
        self.seconds, self.expired, self._sock = seconds, False, None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> "_Watch":
        self._timer.start()
        return self

    def attach(self, sock) -> None:
        with self._lock:
            self._sock = sock
            expired = self.expired
        if expired:
            self._cut()

    def watch(self, response) -> None:
        """Attach the response's socket (a session whose adapter is not ours)."""
        connection = getattr(response.raw, "_connection", None)
        if getattr(connection, "sock", None) is not None:
            self.attach(connection.sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
        self._cut()

    def _cut(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self._timer.cancel()


@functools.cache
def watched_adapter():
    """A requests adapter class whose connections attach their socket to the calling thread's
    request watch, and that verifies https against `bundle` when one is given (passed to each
    send: whatever a session factory or requests' environment handling would choose)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Watched:
        def connect(self):
            super().connect()
            self._attach()

        def request(self, *args, **kwargs):
            if self.sock is not None:  # a kept-alive connection: attach before it is used again
                self._attach()
            return super().request(*args, **kwargs)

        def _attach(self):
            watch = getattr(_current, "watch", None)
            if watch is not None and self.sock is not None:
                watch.attach(self.sock)

    class Conn(Watched, HTTPConnection):
        pass

    class TlsConn(Watched, HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class TlsPool(HTTPSConnectionPool):
        ConnectionCls = TlsConn

    class Adapter(HTTPAdapter):
        def __init__(self, bundle: str | None = None):
            self.bundle = bundle
            super().__init__()

        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

        def send(self, request, **kwargs):
            if self.bundle:
                kwargs["verify"] = self.bundle
            return super().send(request, **kwargs)

    return Adapter


@dataclass
class Answer:
    """One server answer being read: its response, and the budgets it is read under."""

    response: object  # requests.Response, streamed
    uri: str  # what the answer is about, as errors name it
    limit: int  # decoded bytes, in all
    watch: _Watch

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def content_type(self) -> str:
        return self.response.headers.get("Content-Type", "")

    def chunks(self) -> Iterator[bytes]:
        total = 0
        try:
            for chunk in self.response.iter_content(CHUNK):
                total += len(chunk)
                if total > self.limit:
                    raise ResourceLimitError(f"{self.uri}: the server's answer exceeds the limit of {self.limit} "
                                             "bytes (raise --max-file-bytes to allow it)", uri=self.uri)
                yield chunk
                if self.watch.expired:
                    raise self._late()
        except (ResourceLimitError, StorageError):
            raise
        except Exception:
            if self.watch.expired:
                raise self._late() from None
            raise
        finally:
            self.close()
        if self.watch.expired:
            raise self._late()

    def _late(self) -> StorageError:
        return _late(self.uri, self.watch.seconds)

    def close(self) -> None:
        self.watch.stop()
        self.response.close()


def fetch(session, method: str, url: str, uri: str, limit: int, *, accept: str, params=None, data=None,
          headers: dict | None = None, deadline: float | None = None) -> Answer:
    """One request, streamed, within `limit` bytes and the deadline. An HTTP error status raises
    requests' HTTPError (the caller's retry loop classifies it); a redirect raises StorageError."""
    watch = _current.watch = _Watch(deadline or DEADLINE_SECONDS).start()
    try:
        response = session.request(method, url, params=params, data=data, stream=True, allow_redirects=False,
                                   timeout=TIMEOUT, headers={"Accept": accept, **(headers or {})})
    except Exception:
        watch.stop()
        if watch.expired:
            raise _late(uri, watch.seconds) from None
        raise
    finally:
        _current.watch = None
    watch.watch(response)
    answer = Answer(response, uri, limit, watch)
    if response.is_redirect or 300 <= response.status_code < 400:
        answer.close()
        to = response.headers.get("Location", "")
        raise StorageError(f"{uri}: the DICOMweb server answered with a redirect (HTTP {response.status_code} to "
                           f"{where(urljoin(url, to)) if to else 'nowhere'}), which is not followed: the "
                           "request and its credentials go only to the service named (a gateway that wants a "
                           "login, or a service that moved: give its new address)", uri=uri)
    if response.status_code >= 400:
        answer.close()
        response.raise_for_status()
    length = response.headers.get("Content-Length")
    if length and not response.headers.get("Content-Encoding") and length.isdigit() and int(length) > limit:
        answer.close()
        raise ResourceLimitError(f"{uri}: the server's answer is {int(length)} bytes, over the limit of {limit} "
                                 "(raise --max-file-bytes to allow it)", uri=uri)
    return answer


def read_all(answer: Answer) -> bytes:
    return b"".join(answer.chunks())


def read_json(answer: Answer, action: str) -> object:
    """A DICOM JSON answer (QIDO-RS, metadata): refused when it is anything else (a login page)."""
    if answer.status == 204:
        answer.close()
        return []
    kind = answer.content_type.split(";")[0].strip().lower()
    if kind not in ("application/dicom+json", "application/json"):
        answer.close()
        raise StorageError(f"{answer.uri}: the DICOMweb server answered {kind or 'without a Content-Type'} "
                           f"(HTTP {answer.status}), not DICOM JSON ({action}): a login page or a gateway?",
                           uri=answer.uri)
    body = read_all(answer)
    try:
        return json.loads(body) if body.strip() else []
    except ValueError:
        raise StorageError(f"{answer.uri}: the DICOMweb server's answer is not valid JSON ({action})",
                           uri=answer.uri) from None


def _boundary(content_type: str, uri: str) -> bytes:
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/related") or m is None:
        raise StorageError(f"{uri}: the DICOMweb server answered {content_type.split(';')[0] or 'no Content-Type'}, "
                           "not multipart/related with a boundary", uri=uri)
    return m.group(1).encode("latin-1")


def iter_parts(answer: Answer, max_part: int) -> Iterator[bytes]:
    """The bodies of a multipart/related answer (RFC 2046), each as it completes; a part longer
    than `max_part` bytes is refused while it streams."""
    delim = b"\r\n--" + _boundary(answer.content_type, answer.uri)
    buf, pos, state = bytearray(b"\r\n"), 0, "preamble"  # the leading CRLF lets the first boundary match
    for chunk in answer.chunks():
        buf += chunk
        while True:
            if state == "headers":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_PART_HEADERS:
                        raise StorageError(f"{answer.uri}: a part's headers exceed {MAX_PART_HEADERS} bytes",
                                           uri=answer.uri)
                    break
                del buf[:end + 4]
                state, pos = "body", 0
                continue
            i = buf.find(delim, pos)
            if i < 0 or len(buf) < i + len(delim) + 2:
                seen = len(buf) if i < 0 else i
                if state == "body" and seen - len(delim) > max_part:
                    raise ResourceLimitError(f"{answer.uri}: a part of the server's answer exceeds the per-instance "
                                             f"limit of {max_part} bytes (raise --max-file-bytes to allow it)",
                                             uri=answer.uri)
                if state == "preamble" and seen > MAX_PART_HEADERS:
                    raise StorageError(f"{answer.uri}: no multipart boundary in the answer's first "
                                       f"{MAX_PART_HEADERS} bytes", uri=answer.uri)
                pos = i if i >= 0 else max(0, len(buf) - len(delim))
                break
            if state == "body":
                if i > max_part:
                    raise ResourceLimitError(f"{answer.uri}: a part of the server's answer exceeds the per-instance "
                                             f"limit of {max_part} bytes (raise --max-file-bytes to allow it)",
                                             uri=answer.uri)
                yield bytes(buf[:i])
            after = i + len(delim)
            if buf[after:after + 2] == b"--":
                return
            eol = buf.find(b"\r\n", after)
            if eol < 0:
                pos = i
                break
            del buf[:eol + 2]
            state, pos = "headers", 0
    raise StorageError(f"{answer.uri}: the server's multipart answer ended before its closing boundary",
                       uri=answer.uri)


# ---- STOW-RS answers (PS3.18 10.5.3) ----------------------------------------------------------------
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON = "00081155", "00081197"


@dataclass(frozen=True)
class StoreAnswer:
    stored: tuple[str, ...]  # SOP Instance UIDs of the ReferencedSOPSequence
    failed: tuple[tuple[str, str], ...]  # (SOP Instance UID, FailureReason) of the FailedSOPSequence


def acknowledged(answer: Answer, action: str = "STOW-RS store") -> StoreAnswer:
    """What a STOW-RS answer says was stored and refused. Anything that is not DICOM JSON or XML
    (an HTML page, an empty body) says nothing, and is an error: a store is only what the server
    acknowledges."""
    kind = answer.content_type.split(";")[0].strip().lower()
    body = read_all(answer)
    if not body.strip():
        raise StorageError(f"{answer.uri}: the DICOMweb server answered HTTP {answer.status} with an empty body "
                           f"({action}): nothing says the object was stored", uri=answer.uri)
    if kind in ("application/dicom+json", "application/json"):
        return _from_json(body, answer.uri)
    if kind in ("application/dicom+xml", "application/xml", "text/xml"):
        return _from_xml(body, answer.uri)
    raise StorageError(f"{answer.uri}: the DICOMweb server answered HTTP {answer.status} with {kind or 'no type'}, "
                       f"not a DICOM answer ({action}): a login page or a gateway? Nothing says the object was "
                       "stored", uri=answer.uri)


def _from_json(body: bytes, uri: str) -> StoreAnswer:
    try:
        ds = json.loads(body)
        if isinstance(ds, list) and len(ds) == 1:
            ds = ds[0]

        def items(tag: str) -> list[dict]:
            return [i for i in ((ds.get(tag) or {}).get("Value") or []) if isinstance(i, dict)]

        def first(item: dict, tag: str) -> str:
            values = (item.get(tag) or {}).get("Value") or [""]
            return str(values[0]).strip()

        return StoreAnswer(tuple(first(i, REFERENCED_SOP_INSTANCE_UID) for i in items(REFERENCED_SOP_SEQUENCE)),
                           tuple((first(i, REFERENCED_SOP_INSTANCE_UID), first(i, FAILURE_REASON))
                                 for i in items(FAILED_SOP_SEQUENCE)))
    except (ValueError, AttributeError, TypeError):
        raise StorageError(f"{uri}: the DICOMweb server's STOW-RS answer is not a DICOM JSON dataset",
                           uri=uri) from None


def _from_xml(body: bytes, uri: str) -> StoreAnswer:
    try:
        root = ElementTree.fromstring(body)  # a few KB, bounded by the answer's limit
    except ElementTree.ParseError:
        raise StorageError(f"{uri}: the DICOMweb server's STOW-RS answer is not valid XML", uri=uri) from None

    def items(tag: str) -> list:
        return [item for attr in root.iter("DicomAttribute") if attr.get("tag", "").upper() == tag
                for item in attr.iter("Item")]

    def first(item, tag: str) -> str:
        for attr in item.iter("DicomAttribute"):
            if attr.get("tag", "").upper() == tag:
                value = attr.find("Value")
                return (value.text or "").strip() if value is not None else ""
        return ""

    return StoreAnswer(tuple(first(i, REFERENCED_SOP_INSTANCE_UID) for i in items(REFERENCED_SOP_SEQUENCE)),
                       tuple((first(i, REFERENCED_SOP_INSTANCE_UID), first(i, FAILURE_REASON))
                             for i in items(FAILED_SOP_SEQUENCE)))

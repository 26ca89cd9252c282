"""A DICOMweb service (a PACS, or a cloud DICOM store) as an archive to read and a place to deliver.

URIs name a service root and, below it, a study, a series or an instance:

    dicomweb+https://pacs.example.org/dicom-web[?Modality=CT&StudyDate=20240101-20241231]
    dicomweb+https://.../dicom-web/studies/<uid>[/series/<uid>[/instances/<uid>]]

`dicomweb+http://` is for a PACS on this machine or a lab network (`dicomweb_auth.py`).

Listing is QIDO-RS: studies (the study-level filters of the query), the series of a study (the
series-level filters), the instances of a series. `list_level` and `iter_objects` give the same
answers as for a folder tree, so the listing fan-out spreads studies over tasks as it spreads
folders. An instance's `version` is fixed: an instance is its SOP Instance UID, and a changed image
is a new instance (PS3.3 C.12.1.1.1); a series with a new or a removed instance is redone.

Headers come from WADO-RS metadata (one request per series), without pixels; pixels from WADO-RS
retrieve (multipart/related, application/dicom, as stored). Responses are read as streams and
refused past a byte budget before anything parses them (a server's answer is input too: it may be
gzip-encoded and expand). `dicomweb-client` (by the highdicom authors) builds the requests, reads
QIDO answers and decodes multipart messages; its own retrying is off because it neither honours
Retry-After nor retries a refused connection: `_call` does both.

Credentials, TLS and the transport rule: `dicomweb_auth.py`.
"""
from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from unet_core.errors import ConfigError, ResourceLimitError, StorageError
from unet_core.io import storage
from unet_core.io.dicomweb_auth import AUTH_ENV, check_transport, session_for

T = TypeVar("T")
SCHEMES = ("dicomweb+https://", "dicomweb+http://")
RETRY_ATTEMPTS = int(os.environ.get("UNET_DICOMWEB_RETRIES", "6"))
RETRY_BASE_SECONDS = 0.5
MAX_RETRY_AFTER = 60.0  # a Retry-After longer than this is waited this long, then asked again
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
TIMEOUT = (10.0, 120.0)  # connect, read: a server that stops answering is an error, never a hang
MAX_METADATA_BYTES = 512 * 2**20  # one series' metadata (about 10 KB per instance)

# Query keys, by the QIDO-RS level they filter (PS3.18 10.6.1.2). `Modality` filters studies by
# ModalitiesInStudy and then series by Modality.
STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "StudyInstanceUID", "StudyID", "StudyDescription", "PatientBirthDate",
              "PatientSex", "InstitutionName")
SERIES_KEYS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
               "PerformedProcedureStepStartDate", "Manufacturer")

_UID = r"[0-9][0-9.]*"
_PATH = re.compile(rf"^(?P<root>.*?)(?:/studies/(?P<study>{_UID})(?:/series/(?P<series>{_UID})"
                   rf"(?:/instances/(?P<instance>{_UID}))?)?)?/*$")


def is_dicomweb(uri: str) -> bool:
    return uri.startswith(SCHEMES)


@dataclass(frozen=True)
class Ref:
    """A parsed DICOMweb URI: the service (`root`, an http(s) URL) and what below it."""

    root: str
    study: str = ""
    series: str = ""
    instance: str = ""
    query: tuple[tuple[str, str], ...] = ()

    @property
    def uri(self) -> str:
        out = "dicomweb+" + self.root
        for name, uid in (("studies", self.study), ("series", self.series), ("instances", self.instance)):
            if uid:
                out += f"/{name}/{uid}"
        return out + (f"?{urlencode(self.query)}" if self.query else "")

    def below(self, **uids: str) -> "Ref":
        level_query = () if uids.get("series") or self.series else tuple(
            (k, v) for k, v in self.query if k in SERIES_KEYS)
        return replace(self, query=level_query, **uids)

    def filters(self, keys: tuple[str, ...]) -> dict[str, str]:
        return {k: v for k, v in self.query if k in keys}


def parse(uri: str) -> Ref:
    if not is_dicomweb(uri):
        raise ConfigError(f"{uri!r} is not a DICOMweb URI (dicomweb+https://host/path)")
    parts = urlsplit(uri[len("dicomweb+"):])
    if parts.username or parts.password:
        raise ConfigError("a DICOMweb URI must not hold credentials: set DICOMWEB_USER and DICOMWEB_PASSWORD (or "
                          "DICOMWEB_TOKEN) instead")
    if not parts.hostname:
        raise ConfigError(f"{uri!r}: no host in the DICOMweb URI")
    m = _PATH.match(parts.path)
    if m is None:  # pragma: no cover - the pattern matches every path
        raise ConfigError(f"{uri!r} is not a DICOMweb URI")
    query = tuple(parse_qsl(parts.query, keep_blank_values=False))
    unknown = sorted({k for k, _ in query} - set(STUDY_KEYS) - set(SERIES_KEYS))
    if unknown:
        raise ConfigError(f"unknown DICOMweb query keys {', '.join(unknown)}; the study keys are "
                          f"{', '.join(STUDY_KEYS)} and the series keys {', '.join(SERIES_KEYS)}")
    root = f"{parts.scheme}://{parts.netloc}{m['root'].rstrip('/')}"
    return Ref(root, m["study"] or "", m["series"] or "", m["instance"] or "", query)


def with_query(uri: str, query: dict) -> str:
    """A service URI with more query keys (from --dicomweb-query FILE.yaml), validated."""
    if not isinstance(query, dict):
        raise ConfigError(f"--dicomweb-query must be a mapping of QIDO-RS keys to values (got {type(query).__name__})")
    ref = parse(uri)
    extra = tuple((str(k), _query_value(k, v)) for k, v in query.items())
    return parse(replace(ref, query=ref.query + extra).uri).uri


def _query_value(key, value) -> str:
    if isinstance(value, (list, tuple)):  # a list of values: QIDO-RS matches any (PS3.18 8.3.4.1)
        return ",".join(str(v) for v in value)
    if isinstance(value, (dict, type(None))):
        raise ConfigError(f"--dicomweb-query: {key} must be a value or a list of values")
    return str(value)


# ---- the client ---------------------------------------------------------------------------------
_local = threading.local()


def client(root: str):
    """This thread's DICOMweb client of a service (its connections are reused)."""
    from dicomweb_client.api import DICOMwebClient

    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    key = (root, *(os.environ.get(k, "") for k in AUTH_ENV))  # other credentials: another client
    if key not in clients:
        check_transport(root)
        c = DICOMwebClient(root, session=session_for(root), timeout=TIMEOUT)
        c.set_http_retry_params(retry=False)  # `_call` retries, honouring Retry-After
        clients[key] = c
    return clients[key]


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return min(float(value), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None  # an HTTP date: back off as usual


def _transient(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    return _status(exc) in TRANSIENT_STATUS


def _classify(exc: BaseException, uri: str, action: str) -> BaseException:
    if isinstance(exc, (StorageError, ResourceLimitError, ConfigError)):
        return exc
    status = _status(exc)
    if status in (401, 403):
        return StorageError(f"{uri}: access denied by the DICOMweb server (HTTP {status}, {action}); check "
                            "DICOMWEB_TOKEN or DICOMWEB_USER / DICOMWEB_PASSWORD", uri=uri)
    if status == 404:
        return StorageError(f"{uri}: not found on the DICOMweb server ({action})", uri=uri)
    if status is not None:
        return StorageError(f"{uri}: the DICOMweb server answered HTTP {status} ({action})", uri=uri)
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return StorageError(f"{uri}: TLS verification failed ({action}); give the server's CA with "
                            "DICOMWEB_CA_BUNDLE", uri=uri)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return StorageError(f"{uri}: the DICOMweb server cannot be reached ({action}): {type(exc).__name__}", uri=uri)
    return StorageError(f"{uri}: {action} failed: {type(exc).__name__}", uri=uri)


def _call(fn: Callable[[], T], uri: str, action: str, attempts: int | None = None) -> T:
    """Run one request, retrying refused connections, timeouts, 429 and 5xx with jittered
    exponential backoff, or as long as the server's Retry-After says (at most MAX_RETRY_AFTER)."""
    return storage.with_retry(fn, uri, action, attempts or RETRY_ATTEMPTS, transient=_transient, classify=_classify,
                              base_seconds=RETRY_BASE_SECONDS, wait=_retry_after)


def _capped(response, limit: int, uri: str) -> None:
    """Make `response` refuse to yield more than `limit` decoded bytes."""
    length = response.headers.get("Content-Length")
    if length and not response.headers.get("Content-Encoding") and int(length) > limit:
        response.close()
        raise ResourceLimitError(f"{uri}: the server's answer is {int(length)} bytes, over the limit of {limit} "
                                 "(raise --max-file-bytes to allow it)", uri=uri)
    chunks = response.iter_content

    def iter_content(chunk_size=1, decode_unicode=False):
        total = 0
        for chunk in chunks(chunk_size, decode_unicode):
            total += len(chunk)
            if total > limit:
                response.close()
                raise ResourceLimitError(f"{uri}: the server's answer exceeds the limit of {limit} bytes "
                                         "(raise --max-file-bytes to allow it)", uri=uri)
            yield chunk

    response.iter_content = iter_content


def _get(ref: Ref, url: str, accept: str, limit: int):
    c = client(ref.root)
    response = c._http_get(url, headers={"Accept": accept}, stream=True)  # noqa: SLF001 - see the docstring
    _capped(response, limit, ref.uri)
    return c, response


# ---- listing (QIDO-RS) ----------------------------------------------------------------------------
PAGE = 1000  # QIDO-RS answers asked per request (limit / offset)


def _pages(search: Callable[..., list[dict]], uri: str, action: str, tag: str) -> list[dict]:
    """Every answer of a QIDO-RS search, a page at a time. A page shorter than asked is the last;
    a server that ignores `offset` (the same page again) is an error, not an endless listing."""
    answers: list[dict] = []
    seen: set[str] = set()
    while True:
        page = _call(lambda offset=len(answers): search(limit=PAGE, offset=offset), uri, action)
        fresh = {a[tag]["Value"][0] for a in page if a.get(tag, {}).get("Value")} - seen
        if page and not fresh:
            raise StorageError(f"{uri}: the DICOMweb server answered the same page again ({action}, offset "
                               f"{len(answers)}): it does not page its answers", uri=uri)
        answers += page
        seen |= fresh
        if len(page) < PAGE:
            return answers


def _uids(answers: list[dict], tag: str) -> list[str]:
    return sorted({a[tag]["Value"][0] for a in answers if a.get(tag, {}).get("Value")})


def studies(ref: Ref) -> list[str]:
    filters = ref.filters(STUDY_KEYS)
    if "Modality" in dict(ref.query) and "ModalitiesInStudy" not in filters:
        filters["ModalitiesInStudy"] = dict(ref.query)["Modality"]
    return _uids(_pages(lambda **page: client(ref.root).search_for_studies(
        fields=["StudyInstanceUID"], search_filters=filters, **page), ref.uri, "QIDO-RS study search", "0020000D"),
        "0020000D")


# Series of these modalities hold no image to segment (structured reports, presentation states,
# key objects, segmentations: among them the SEGs this tool stores at the same server). They are
# left out of the listing: their instances would only be set aside, one request each.
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG",
                                  "DOC", "FID", "PLAN", "AU", "ECG", "HD"})


def series(ref: Ref) -> list[str]:
    answers = _pages(lambda **page: client(ref.root).search_for_series(
        ref.study, fields=["SeriesInstanceUID", "Modality"], search_filters=ref.filters(SERIES_KEYS), **page),
        ref.uri, "QIDO-RS series search", "0020000E")
    return _uids([a for a in answers if _value(a, "00080060") not in NON_IMAGE_MODALITIES], "0020000E")


def _value(answer: dict, tag: str) -> str:
    values = (answer.get(tag) or {}).get("Value") or [""]
    return str(values[0]).strip().upper()


def instances(ref: Ref) -> list[str]:
    return _uids(_pages(lambda **page: client(ref.root).search_for_instances(
        ref.study, ref.series, fields=["SOPInstanceUID"], **page), ref.uri, "QIDO-RS instance search", "00080018"),
        "00080018")


def children(ref: Ref) -> list[Ref]:
    """One level down: the studies of a service, the series of a study, the instances of a series."""
    if ref.instance:
        return []
    if ref.series:
        return [ref.below(instance=i) for i in instances(ref)]
    if ref.study:
        return [ref.below(series=s) for s in series(ref)]
    return [ref.below(study=s) for s in studies(ref)]


def iter_instances(ref: Ref) -> Iterator[Ref]:
    """Every instance below `ref`, series by series."""
    if ref.instance:
        yield ref
        return
    for child in children(ref):
        yield from iter_instances(child)


def probe(uri: str) -> None:
    """One small QIDO-RS request before a job writes anything: a server that cannot be reached or
    refuses the credentials fails the job now (exit 5), naming the service, not the archive."""
    ref = parse(uri)
    check_transport(ref.root)
    _call(lambda: client(ref.root).search_for_studies(fields=["StudyInstanceUID"], limit=1), "dicomweb+" + ref.root,
          "connecting", attempts=3)


# ---- reading (WADO-RS) ----------------------------------------------------------------------------
def series_metadata(ref: Ref, only: str = "") -> list[dict]:
    """The DICOM JSON of a series' instances (or of one instance: `only`), without pixel data."""
    import json

    from dicomweb_client.web import _Transaction

    def fetch() -> list[dict]:
        c = client(ref.root)
        url = (c._get_instances_url(_Transaction.RETRIEVE, ref.study, ref.series, only) if only  # noqa: SLF001
               else c._get_series_url(_Transaction.RETRIEVE, ref.study, ref.series)) + "/metadata"  # noqa: SLF001
        _, response = _get(ref, url, "application/dicom+json", MAX_METADATA_BYTES)
        with response:
            return json.loads(b"".join(response.iter_content(2**20)))

    return _call(fetch, ref.uri, "WADO-RS metadata")


def read_instance(uri: str, max_bytes: int) -> bytes:
    """One instance's Part 10 bytes, as stored (any transfer syntax); refused past `max_bytes`."""
    from dicomweb_client.web import _Transaction

    ref = parse(uri)

    def fetch() -> bytes:
        c = client(ref.root)
        url = c._get_instances_url(_Transaction.RETRIEVE, ref.study, ref.series, ref.instance)  # noqa: SLF001
        c, response = _get(ref, url, 'multipart/related; type="application/dicom"; transfer-syntax=*', max_bytes)
        if response.headers.get("Content-Type", "").startswith("application/dicom"):
            with response:  # a server that sends the part bare (dicomweb-client tolerates it too)
                return b"".join(response.iter_content(2**20))
        parts = list(c._decode_multipart_message(response, stream=True))  # noqa: SLF001
        if len(parts) != 1:
            raise StorageError(f"{uri}: the server answered {len(parts)} parts for one instance", uri=uri)
        return bytes(parts[0])

    return _call(fetch, uri, "WADO-RS retrieve")


def read_series(uris: list[str], max_bytes: int) -> dict[str, bytes]:
    """Instances of one series in one WADO-RS request (the whole series, streamed; parts the
    volume does not need are dropped as they arrive): {uri: Part 10 bytes} of those found. The
    answer is refused past `max_bytes` per instance asked for."""
    from dicomweb_client.web import _Transaction

    first = parse(uris[0])
    ref = Ref(first.root, first.study, first.series)
    wanted = {parse(u).instance: u for u in uris}

    def fetch() -> dict[str, bytes]:
        c = client(ref.root)
        url = c._get_series_url(_Transaction.RETRIEVE, ref.study, ref.series)  # noqa: SLF001
        c, response = _get(ref, url, 'multipart/related; type="application/dicom"; transfer-syntax=*',
                           max_bytes * len(wanted))
        found = {}
        for part in c._decode_multipart_message(response, stream=True):  # noqa: SLF001
            uid = sop_instance_uid(bytes(part[:8192])) or sop_instance_uid(bytes(part))
            if uid in wanted:
                found[wanted[uid]] = bytes(part)
        return found

    return _call(fetch, ref.uri, "WADO-RS retrieve")


def sop_instance_uid(data: bytes) -> str:
    """The SOP Instance UID of Part 10 bytes (a prefix may do); "" when it cannot be read."""
    from io import BytesIO

    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID).strip()
    except Exception:  # noqa: BLE001 - unreadable here: read again alone, where the error names it
        return ""


# ---- delivering (STOW-RS) -------------------------------------------------------------------------
def store(root_uri: str, data: bytes) -> None:
    """Store one Part 10 object. A SEG stored again under the same SOP Instance UID replaces, or
    is kept once, by the server's rule: never a second copy."""
    from io import BytesIO

    import pydicom

    ref = parse(root_uri)
    ds = pydicom.dcmread(BytesIO(data))

    def post() -> None:
        answer = client(ref.root).store_instances([ds])
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            reasons = ", ".join(str(getattr(f, "FailureReason", "?")) for f in failed)
            raise StorageError(f"{root_uri}: the server refused the object (STOW-RS failure reason {reasons})",
                               uri=root_uri)

    _call(post, "dicomweb+" + ref.root, "STOW-RS store")


@functools.lru_cache(maxsize=64)
def destination(uri: str) -> str:
    """A delivery URI as recorded (`sent_to`): the service root, validated."""
    ref = parse(uri)
    if ref.study or ref.query:
        raise ConfigError(f"{uri}: deliver to the service root (dicomweb+https://host/dicom-web), not below it")
    return ref.uri

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
retrieve (multipart/related, application/dicom, as stored). A server's answer is input too: every
answer (QIDO-RS pages included) is read as a stream within a byte budget, a per-part budget and a
deadline, redirects are never followed, a listing stops past `MAX_ANSWERS`, UIDs from answers are
checked as UIDs before they go into a URL, and what a retrieve returns is checked against what was
asked for (`dicomweb_http.py`). A store is what the server acknowledges: `store` succeeds only
when the STOW-RS answer's ReferencedSOPSequence names the object's own SOP Instance UID.
`_call` retries refused connections, timeouts, 429 and 5xx (storage.with_retry decides which),
honouring Retry-After. The requests are built here; `dicomweb-client` (by the highdicom authors)
is no longer in the way of any answer (it follows redirects on POST and reads a 200 that is not
DICOM as an empty success).

Credentials, TLS and the transport rule: `dicomweb_auth.py`.
"""
from __future__ import annotations

import functools
import os
import re
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from unet_core.errors import ConfigError, NotFoundError, ResourceLimitError, StorageError
from unet_core.io import dicomweb_http as http
from unet_core.io import storage
from unet_core.io.dicomweb_auth import AUTH_ENV, check_transport, session_for

T = TypeVar("T")
SCHEMES = ("dicomweb+https://", "dicomweb+http://")
RETRY_ATTEMPTS = int(os.environ.get("UNET_DICOMWEB_RETRIES", "6"))  # a job's workers: from its settings (process_settings)
RETRY_BASE_SECONDS = 0.5
MAX_RETRY_AFTER = 60.0  # a Retry-After longer than this is waited this long, then asked again
MAX_METADATA_BYTES = 512 * 2**20  # one series' metadata (about 10 KB per instance)
MAX_QIDO_BYTES = 64 * 2**20  # one QIDO-RS page (1,000 answers of a few hundred bytes each)
MAX_ANSWERS = int(os.environ.get("UNET_DICOMWEB_MAX_ANSWERS", "1000000"))  # one listing level, all pages
MAX_STOW_ANSWER_BYTES = 2**20

# Query keys, by the QIDO-RS level they filter (PS3.18 10.6.1.2). `Modality` filters studies by
# ModalitiesInStudy and then series by Modality.
STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "StudyInstanceUID", "StudyID", "StudyDescription", "PatientBirthDate",
              "PatientSex", "InstitutionName")
SERIES_KEYS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
               "PerformedProcedureStepStartDate", "Manufacturer")

_UID = r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*"  # PS3.5 9.1
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
        for level, uid in uids.items():  # a server's answer: checked before it goes into a URL
            http.check_uid(uid, "dicomweb+" + self.root, f"{level} UID")
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
    segments = m["root"].split("/")
    if "studies" in segments or "." in segments or ".." in segments or any("%" in x for x in segments):
        raise ConfigError(f"{uri!r}: below a DICOMweb service, studies, series and instances are named by DICOM "
                          "UIDs (digits and dots), and the path has no '.', '..' or percent-escapes")
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
    """This thread's DICOMweb client of a service: it holds the session (credentials, TLS; its
    connections are reused). The requests themselves are made here, through `dicomweb_http`."""
    from dicomweb_client.api import DICOMwebClient

    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    key = (root, *(os.environ.get(k, "") for k in AUTH_ENV))  # other credentials: another client
    if key not in clients:
        check_transport(root)
        c = DICOMwebClient(root, session=session_for(root), timeout=http.TIMEOUT)
        c.set_http_retry_params(retry=False)  # `_call` retries, honouring Retry-After
        clients[key] = c
    return clients[key]


def _session(root: str):
    return client(root)._session  # the session it was given (session_for)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return min(float(value), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None  # an HTTP date: back off as usual


def _classify(exc: BaseException, uri: str, action: str) -> BaseException:
    """The final error of a request, in DICOMweb's words; which errors were retried, and which
    mean "not found", is storage.diagnose's decision (the HTTP status, requests' error types)."""
    if isinstance(exc, (StorageError, ResourceLimitError, ConfigError)):
        return exc
    found = storage.diagnose(exc, uri)
    status = found.status
    if found.failure is storage.Failure.DENIED:
        return StorageError(f"{uri}: access denied by the DICOMweb server (HTTP {status}, {action}); check "
                            "DICOMWEB_TOKEN or DICOMWEB_USER / DICOMWEB_PASSWORD", uri=uri)
    if found.failure is storage.Failure.NOT_FOUND:
        return NotFoundError(f"{uri}: not found on the DICOMweb server ({action})", uri=uri)
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
    return storage.with_retry(fn, uri, action, attempts or RETRY_ATTEMPTS, classify=_classify,
                              base_seconds=RETRY_BASE_SECONDS, wait=_retry_after)


def _get(ref: Ref, url: str, accept: str, limit: int, params=None) -> http.Answer:
    return http.fetch(_session(ref.root), "GET", url, ref.uri, limit, accept=accept, params=params)


def _url(ref: Ref, study: str = "", series: str = "", instance: str = "") -> str:
    out = ref.root
    for name, uid in (("studies", study), ("series", series), ("instances", instance)):
        if uid:
            out += f"/{name}/{uid}"
    return out


# ---- listing (QIDO-RS) ----------------------------------------------------------------------------
PAGE = 1000  # QIDO-RS answers asked per request (limit / offset)


def _search(ref: Ref, url: str, fields: list[str], filters: dict[str, str], action: str):
    """A QIDO-RS search as `_pages` calls it: one page, read within MAX_QIDO_BYTES."""

    def page(limit: int, offset: int) -> list[dict]:
        params = [("includefield", f) for f in fields] + sorted(filters.items())
        params += [("limit", str(limit)), ("offset", str(offset))]
        try:
            answers = http.read_json(_get(ref, url, "application/dicom+json", MAX_QIDO_BYTES, params), action)
        except ResourceLimitError:  # the server's fault, not an object's: the listing fails (exit 5)
            raise StorageError(f"{ref.uri}: a QIDO-RS page of the DICOMweb server exceeds {MAX_QIDO_BYTES} bytes "
                               f"({action}, {limit} answers asked for)", uri=ref.uri) from None
        if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
            raise StorageError(f"{ref.uri}: the DICOMweb server's answer is not a list of DICOM JSON datasets "
                               f"({action})", uri=ref.uri)
        return answers

    return page


def _pages(search: Callable[..., list[dict]], uri: str, action: str, tag: str) -> list[dict]:
    """Every answer of a QIDO-RS search, a page at a time. A page shorter than asked is the last;
    a server that ignores `offset` (the same page again) is an error, not an endless listing, and
    so is one that keeps answering fresh pages past MAX_ANSWERS."""
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
        if len(answers) >= MAX_ANSWERS:
            raise StorageError(f"{uri}: the DICOMweb server kept answering past {MAX_ANSWERS} results ({action}); "
                               "narrow the query (--dicomweb-query) or raise UNET_DICOMWEB_MAX_ANSWERS", uri=uri)


def _uids(answers: list[dict], tag: str, service: str, what: str) -> list[str]:
    """The UIDs of the answers, each checked as a UID: they go into the next request's URL."""
    found = {a[tag]["Value"][0] for a in answers if a.get(tag, {}).get("Value")}
    return sorted(http.check_uid(u, service, what) for u in found)


def studies(ref: Ref) -> list[str]:
    filters = ref.filters(STUDY_KEYS)
    if "Modality" in dict(ref.query) and "ModalitiesInStudy" not in filters:
        filters["ModalitiesInStudy"] = dict(ref.query)["Modality"]
    action = "QIDO-RS study search"
    answers = _pages(_search(ref, _url(ref) + "/studies", ["StudyInstanceUID"], filters, action), ref.uri, action,
                     "0020000D")
    return _uids(answers, "0020000D", "dicomweb+" + ref.root, "Study Instance UID")


# Series of these modalities hold no image to segment (structured reports, presentation states,
# key objects, segmentations: among them the SEGs this tool stores at the same server). They are
# left out of the listing: their instances would only be set aside, one request each.
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG",
                                  "DOC", "FID", "PLAN", "AU", "ECG", "HD"})


def series(ref: Ref) -> list[str]:
    action = "QIDO-RS series search"
    answers = _pages(_search(ref, _url(ref, ref.study) + "/series", ["SeriesInstanceUID", "Modality"],
                             ref.filters(SERIES_KEYS), action), ref.uri, action, "0020000E")
    return _uids([a for a in answers if _value(a, "00080060") not in NON_IMAGE_MODALITIES], "0020000E",
                 "dicomweb+" + ref.root, "Series Instance UID")


def _value(answer: dict, tag: str) -> str:
    values = (answer.get(tag) or {}).get("Value") or [""]
    return str(values[0]).strip().upper()


def instances(ref: Ref) -> list[str]:
    action = "QIDO-RS instance search"
    answers = _pages(_search(ref, _url(ref, ref.study, ref.series) + "/instances", ["SOPInstanceUID"], {}, action),
                     ref.uri, action, "00080018")
    return _uids(answers, "00080018", "dicomweb+" + ref.root, "SOP Instance UID")


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
    root = Ref(ref.root)
    _call(lambda: _search(root, _url(root) + "/studies", ["StudyInstanceUID"], {}, "connecting")(1, 0),
          "dicomweb+" + ref.root, "connecting", attempts=3)


# ---- reading (WADO-RS) ----------------------------------------------------------------------------
def _same(meta: dict, tag: str, expected: str) -> bool:
    values = (meta.get(tag) or {}).get("Value") or [""]
    return str(values[0]).strip() == expected


def series_metadata(ref: Ref, only: str = "") -> list[dict]:
    """The DICOM JSON of a series' instances (or of one instance: `only`), without pixel data;
    refused when the server describes instances of another study or series (or another instance)."""

    def fetch() -> list[dict]:
        url = _url(ref, ref.study, ref.series, only) + "/metadata"
        found = http.read_json(_get(ref, url, "application/dicom+json", MAX_METADATA_BYTES), "WADO-RS metadata")
        if not isinstance(found, list) or not all(isinstance(m, dict) for m in found):
            raise StorageError(f"{ref.uri}: the DICOMweb server's metadata is not a list of DICOM JSON datasets",
                               uri=ref.uri)
        for meta in found:
            if not (_same(meta, "0020000D", ref.study) and _same(meta, "0020000E", ref.series)
                    and (not only or _same(meta, "00080018", only))):
                raise StorageError(f"{ref.uri}: the DICOMweb server's metadata describes an instance that was not "
                                   "asked for (another study, series or instance)", uri=ref.uri)
        return found

    return _call(fetch, ref.uri, "WADO-RS metadata")


def _uids_of(data: bytes) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of Part 10 bytes (a prefix may do); "" where unreadable."""
    from io import BytesIO

    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        return tuple(str(ds.get(k, "")).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID",  # type: ignore[return-value]
                                                           "SOPInstanceUID"))
    except Exception:  # noqa: BLE001 - unreadable here: read again alone, where the error names it
        return ("", "", "")


def sop_instance_uid(data: bytes) -> str:
    """The SOP Instance UID of Part 10 bytes (a prefix may do); "" when it cannot be read."""
    return _uids_of(data)[2]


def _part_uids(part: bytes) -> tuple[str, str, str]:
    found = _uids_of(part[:8192])
    return found if found[2] else _uids_of(part)


def read_instance(uri: str, max_bytes: int) -> bytes:
    """One instance's Part 10 bytes, as stored (any transfer syntax); refused past `max_bytes`,
    and when the server answers another instance than the one asked for."""
    ref = parse(uri)

    def fetch() -> bytes:
        url = _url(ref, ref.study, ref.series, ref.instance)
        answer = _get(ref, url, 'multipart/related; type="application/dicom"; transfer-syntax=*',
                      max_bytes + http.MAX_PART_HEADERS)
        if answer.content_type.startswith("application/dicom"):  # a server that sends the part bare
            parts = [http.read_all(answer)]
        else:
            parts = list(http.iter_parts(answer, max_bytes))
        if len(parts) != 1:
            raise StorageError(f"{uri}: the server answered {len(parts)} parts for one instance", uri=uri)
        if _part_uids(parts[0]) != (ref.study, ref.series, ref.instance):
            raise StorageError(f"{uri}: the DICOMweb server answered another instance than the one asked for",
                               uri=uri)
        return parts[0]

    return _call(fetch, uri, "WADO-RS retrieve")


def read_series(uris: list[str], max_bytes: int) -> dict[str, bytes]:
    """Instances of one series in one WADO-RS request (the whole series, streamed; parts the
    volume does not need are dropped as they arrive): {uri: Part 10 bytes} of those found. A part
    over `max_bytes` is refused as it streams, the whole answer past `max_bytes` per instance
    asked for, and a part of another study or series is an error."""
    first = parse(uris[0])
    ref = Ref(first.root, first.study, first.series)
    wanted = {parse(u).instance: u for u in uris}

    def fetch() -> dict[str, bytes]:
        url = _url(ref, ref.study, ref.series)
        answer = _get(ref, url, 'multipart/related; type="application/dicom"; transfer-syntax=*',
                      (max_bytes + http.MAX_PART_HEADERS) * len(wanted))
        found = {}
        for part in http.iter_parts(answer, max_bytes):
            study, series_uid, uid = _part_uids(part)
            if uid and (study, series_uid) != (ref.study, ref.series):
                raise StorageError(f"{ref.uri}: the DICOMweb server answered an instance of another study or series",
                                   uri=ref.uri)
            if uid in wanted:
                found[wanted[uid]] = part
        return found

    return _call(fetch, ref.uri, "WADO-RS retrieve")


# ---- delivering (STOW-RS) -------------------------------------------------------------------------
def store(root_uri: str, data: bytes, expected: Sequence[str] = ()) -> tuple[str, ...]:
    """Store one Part 10 object, as given, and return the SOP Instance UIDs the server
    acknowledged. `expected` (default: the object's own SOP Instance UID) must be the object's
    UID and must be in the answer's ReferencedSOPSequence: a redirect, an HTML or empty 200, an
    answer naming other instances or a FailedSOPSequence entry are StorageErrors that say which.
    A SEG stored again under the same SOP Instance UID replaces, or is kept once, by the
    server's rule: never a second copy."""
    ref = parse(root_uri)
    service = "dicomweb+" + ref.root
    own = sop_instance_uid(data)
    if not own:
        raise StorageError(f"{root_uri}: the object to store has no readable SOP Instance UID", uri=root_uri)
    expected = tuple(expected) or (own,)
    if own not in expected:
        raise StorageError(f"{root_uri}: the object to store is SOP instance {own}, not the one expected "
                           f"({', '.join(expected)}): not sent", uri=root_uri)
    boundary = uuid.uuid4().hex
    body = b"".join((f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                     f"\r\n--{boundary}--\r\n".encode()))
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

    def post() -> tuple[str, ...]:
        answer = http.fetch(_session(ref.root), "POST", _url(ref) + "/studies", service, MAX_STOW_ANSWER_BYTES,
                            accept="application/dicom+json, application/dicom+xml;q=0.9", data=body,
                            headers={"Content-Type": content_type})
        said = http.acknowledged(answer)
        failed = [reason for uid, reason in said.failed if uid in expected or not uid]
        if failed:
            raise StorageError(f"{service}: the server refused the object (STOW-RS failure reason "
                               f"{', '.join(r or '?' for r in failed)})", uri=service)
        missing = [uid for uid in expected if uid not in said.stored]
        if missing:
            others = f" (it names {len(said.stored)} other instance(s))" if said.stored else ""
            raise StorageError(f"{service}: the server's STOW-RS answer does not acknowledge SOP instance "
                               f"{', '.join(missing)}{others}: not recorded as stored", uri=service)
        return said.stored

    return _call(post, service, "STOW-RS store")


@functools.lru_cache(maxsize=64)
def destination(uri: str) -> str:
    """A delivery URI as recorded (`sent_to`): the service root, validated."""
    ref = parse(uri)
    if ref.study or ref.query:
        raise ConfigError(f"{uri}: deliver to the service root (dicomweb+https://host/dicom-web), not below it")
    return ref.uri

"""The DICOMweb client's rules without a server: URIs and queries, where credentials may go, how
answers are bounded, retried and classified. (Against a real Orthanc: tests/test_dicomweb.py.)"""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from unet_core.errors import ConfigError, ResourceLimitError, StorageError
from unet_core.io import dicomweb, dicomweb_auth, dicomweb_http, listing, storage


def test_uris_parse_and_print_back():
    ref = dicomweb.parse("dicomweb+https://pacs.example.org/dicom-web?Modality=CT&StudyDate=20240101-20241231")
    assert ref.root == "https://pacs.example.org/dicom-web" and not ref.study
    assert ref.filters(dicomweb.STUDY_KEYS) == {"StudyDate": "20240101-20241231"}
    study = ref.below(study="1.2.3")
    assert study.uri == "dicomweb+https://pacs.example.org/dicom-web/studies/1.2.3?Modality=CT"  # series keys only
    inst = dicomweb.parse("dicomweb+http://127.0.0.1:8042/a/studies/1.2/series/1.2.3/instances/1.2.3.4/")
    assert (inst.root, inst.study, inst.series, inst.instance) == ("http://127.0.0.1:8042/a", "1.2", "1.2.3", "1.2.3.4")
    assert dicomweb.parse(inst.uri) == inst
    # A Google-style root whose path holds more segments.
    g = dicomweb.parse("dicomweb+https://h/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb/studies/1.2")
    assert g.root.endswith("/dicomWeb") and g.study == "1.2"


@pytest.mark.parametrize("uri, words", [
    ("dicomweb+https://user:pw@pacs/dicom-web", "must not hold credentials"),
    ("dicomweb+https://pacs/dicom-web?PatientWeight=80", "unknown DICOMweb query keys PatientWeight"),
    ("dicomweb+https:///dicom-web", "no host"),
])
def test_bad_uris_are_refused_with_the_reason(uri, words):
    with pytest.raises(ConfigError, match=words):
        dicomweb.parse(uri)


def test_a_query_file_adds_keys_and_lists_become_any_of():
    uri = dicomweb.with_query("dicomweb+https://pacs/dicom-web?Modality=CT",
                              {"StudyDate": "20240101-20241231", "AccessionNumber": ["A1", "A2"]})
    assert dicomweb.parse(uri).filters(dicomweb.STUDY_KEYS) == {"StudyDate": "20240101-20241231",
                                                                 "AccessionNumber": "A1,A2"}
    with pytest.raises(ConfigError, match="mapping"):
        dicomweb.with_query("dicomweb+https://pacs/dicom-web", ["StudyDate"])


def test_delivery_goes_to_a_service_root():
    assert dicomweb.destination("dicomweb+https://pacs/dicom-web/") == "dicomweb+https://pacs/dicom-web"
    with pytest.raises(ConfigError, match="service root"):
        dicomweb.destination("dicomweb+https://pacs/dicom-web/studies/1.2")


def test_a_dicomweb_uri_is_never_a_place_to_write():
    with pytest.raises(ConfigError, match="not a place to write"):
        storage.write_bytes("dicomweb+https://pacs/dicom-web/x", b"")


@pytest.mark.parametrize("root, env, refused", [
    ("http://pacs.hospital.org/dicom-web", {"DICOMWEB_PASSWORD": "s3cr3t-pw"}, True),
    ("http://pacs.hospital.org/dicom-web", {"DICOMWEB_TOKEN": "s3cr3t-token"}, True),
    ("http://pacs.hospital.org/dicom-web", {"DICOMWEB_TOKEN": "t", "DICOMWEB_ALLOW_HTTP": "1"}, False),
    ("http://pacs.hospital.org/dicom-web", {}, False),  # nothing secret to leak
    ("https://pacs.hospital.org/dicom-web", {"DICOMWEB_TOKEN": "t"}, False),
    ("http://127.0.0.1:8042/dicom-web", {"DICOMWEB_TOKEN": "t"}, False),
    ("http://localhost:8042/dicom-web", {"DICOMWEB_TOKEN": "t"}, False),
])
def test_credentials_never_go_over_plain_http_to_another_machine(root, env, refused, monkeypatch):
    for k in dicomweb_auth.AUTH_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if refused:
        with pytest.raises(ConfigError, match="plain http") as info:
            dicomweb.client(root)
        assert "s3cr3t" not in str(info.value) and "pacs.hospital.org" in str(info.value)
    else:
        dicomweb_auth.check_transport(root)


def test_a_session_factory_is_the_plug_point_for_cloud_credentials(monkeypatch):
    monkeypatch.setenv("DICOMWEB_SESSION_FACTORY", "tests_factory_module:make")
    module = type(__import__("sys"))("tests_factory_module")
    made = []

    def make(root):
        made.append(root)
        s = requests.Session()
        s.headers["Authorization"] = "Bearer from-the-cloud"
        return s

    module.make = make
    monkeypatch.setitem(__import__("sys").modules, "tests_factory_module", module)
    c = dicomweb.client("https://store.example/dicomWeb")
    assert made == ["https://store.example/dicomWeb"]
    assert c._session.headers["Authorization"] == "Bearer from-the-cloud"
    assert c._session.verify is True  # TLS verification stays on


class _Server:
    """A tiny HTTP server whose handler a test sets: 429s, slow answers, huge answers."""

    def __init__(self, handle, host: str = "127.0.0.1"):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                handle(self)

            def do_POST(self):
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                handle(self)

        self.server = ThreadingHTTPServer((host, 0), H)
        self.server.daemon_threads = True
        self.root = f"http://{host}:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _answer(h, status: int, body: bytes = b"", headers: dict | None = None):
    h.send_response(status)
    for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def test_429_and_503_are_retried_as_long_as_retry_after_says(monkeypatch):
    calls, slept = [], []
    monkeypatch.setattr(storage.time, "sleep", slept.append)

    def handle(h):
        calls.append(h.path)
        if len(calls) == 1:
            _answer(h, 429, headers={"Retry-After": "7"})
        elif len(calls) == 2:
            _answer(h, 503)
        else:
            _answer(h, 200, b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]',
                    {"Content-Type": "application/dicom+json"})

    server = _Server(handle)
    try:
        assert dicomweb.studies(dicomweb.parse("dicomweb+" + server.root)) == ["1.2.3"]
    finally:
        server.close()
    assert len(calls) == 3 and slept[0] == 7.0 and 0 < slept[1] < 7.0


@pytest.mark.parametrize("status, words", [(401, "access denied"), (403, "access denied"), (404, "not found"),
                                           (400, "HTTP 400")])
def test_refusals_are_not_retried_and_say_what_to_check(status, words, monkeypatch):
    calls = []
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    server = _Server(lambda h: (calls.append(1), _answer(h, status)))
    try:
        with pytest.raises(StorageError, match=words):
            dicomweb.studies(dicomweb.parse("dicomweb+" + server.root))
    finally:
        server.close()
    assert len(calls) == 1


def _chunked(h, content_type: str, pieces, sent: list | None = None):
    """Answer 200 with chunked transfer encoding (no length to check up front), counting what went."""
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    try:
        for piece in pieces:
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if sent is not None:
                sent.append(len(piece))
        h.wfile.write(b"0\r\n\r\n")
    except OSError:  # the client hung up: what the test wants to see
        pass


MULTIPART = 'multipart/related; type="application/dicom"; boundary=b'


def test_a_part_over_the_per_instance_budget_is_refused_while_it_streams():
    """A 64 MiB part to a client allowed 1 MiB per instance: refused after about 1 MiB, long
    before the server could send it all (the whole answer's budget would have let it through)."""
    sent: list[int] = []
    piece = b"x" * 2**16

    def handle(h):
        _chunked(h, MULTIPART, [b"--b\r\nContent-Type: application/dicom\r\n\r\n", *([piece] * 1024)], sent)

    server = _Server(handle)
    try:
        uris = [f"dicomweb+{server.root}/studies/1.2/series/1.2.3/instances/1.2.3.{i}" for i in range(1, 65)]
        with pytest.raises(ResourceLimitError, match="per-instance limit of 1048576 bytes"):
            dicomweb.read_series(uris, 2**20)
    finally:
        server.close()
    assert sum(sent) < 32 * 2**20


def test_an_answer_that_is_not_multipart_is_refused_before_it_is_parsed():
    server = _Server(lambda h: _chunked(h, MULTIPART, [b"x" * 2**16] * 48))
    try:
        with pytest.raises(StorageError, match="no multipart boundary"):
            dicomweb.read_instance(f"dicomweb+{server.root}/studies/1.2/series/1.2.3/instances/1.2.3.4", 2**20)
    finally:
        server.close()


def test_a_server_that_never_answers_is_an_error_not_a_hang(monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setattr(dicomweb_http, "TIMEOUT", (1.0, 1.0))
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    result = {}

    def ask():  # a thread of its own: a client made with this test's timeout
        try:
            dicomweb.studies(dicomweb.parse(f"dicomweb+http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"))
        except StorageError as exc:
            result["error"] = str(exc)

    try:
        t = threading.Thread(target=ask)
        t.start()
        t.join(60)
        assert not t.is_alive() and "cannot be reached" in result["error"]
    finally:
        silent.close()


def test_listing_levels_are_studies_then_series_then_instances(monkeypatch):
    monkeypatch.setattr(dicomweb, "studies", lambda ref: ["1.1", "1.2"])
    monkeypatch.setattr(dicomweb, "series", lambda ref: ["1.1.7"] if ref.study == "1.1" else [])
    monkeypatch.setattr(dicomweb, "instances", lambda ref: ["1.1.7.1", "1.1.7.2"])
    root = "dicomweb+https://pacs/dicom-web"
    level = listing.list_level(root)
    assert level.dirs == (f"{root}/studies/1.1", f"{root}/studies/1.2") and not level.has_objects
    assert listing.list_level(f"{root}/studies/1.1/series/1.1.7").has_objects
    entries = list(listing.iter_objects(root))
    assert [e.uri for e in entries] == [f"{root}/studies/1.1/series/1.1.7/instances/1.1.7.{i}" for i in (1, 2)]
    assert {e.version for e in entries} == {listing.DICOMWEB_VERSION}


@pytest.mark.parametrize("honours_offset", [True, False])
def test_qido_answers_are_paged_and_a_server_that_ignores_offset_is_an_error(honours_offset, monkeypatch):
    from urllib.parse import parse_qs, urlsplit

    monkeypatch.setattr(dicomweb, "PAGE", 2)
    uids = [f"1.2.{i}" for i in range(5)]

    def handle(h):
        q = parse_qs(urlsplit(h.path).query)
        start = int(q["offset"][0]) if honours_offset else 0
        page = uids[start:start + int(q["limit"][0])]
        body = ("[" + ",".join(f'{{"0020000D": {{"vr": "UI", "Value": ["{u}"]}}}}' for u in page) + "]").encode()
        _answer(h, 200, body, {"Content-Type": "application/dicom+json"})

    server = _Server(handle)
    try:
        ref = dicomweb.parse("dicomweb+" + server.root)
        if honours_offset:
            assert dicomweb.studies(ref) == uids
        else:
            with pytest.raises(StorageError, match="does not page"):
                dicomweb.studies(ref)
    finally:
        server.close()


def test_the_header_from_dicom_json_equals_the_files_own_on_every_test_file():
    """A DICOMweb server's metadata is DICOM JSON (PS3.18 F.2): for every image of pydicom's test
    data, the scan's header from that JSON (the quick reader, or pydicom's `from_json` for enhanced
    objects) equals the header scanned from the file itself, but for what the JSON cannot say (the
    transfer syntax, a truncation)."""
    import pydicom

    from support.dicom_factory import pydicom_test_files
    from unet_core.io.dicom.header import ObjectKind, header_from_dataset, scan_header
    from unet_core.segmentation import scanning

    compared = quick = 0
    for path in map(str, pydicom_test_files()):
        if path.endswith((".txt", ".json", ".gz", ".bz2", ".zip", ".md")):
            continue
        data = open(path, "rb").read()
        h = scan_header(data, path)
        if h.kind != ObjectKind.IMAGE:
            continue
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).to_json_dict(bulk_data_threshold=1,
                                                                              bulk_data_element_handler=lambda e: "x")
        except Exception:  # noqa: BLE001 - a value pydicom cannot write as JSON: no server would send it either
            continue
        meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "x"}
        from_json = header_from_dataset(scanning._dataset_of(meta, path), path, h.size, True).row()
        from_file = h.row()
        for row in (from_json, from_file):
            row.pop("transfer_syntax"), row.pop("missing_bytes")
        assert from_json == from_file, path
        compared += 1
        quick += scanning._fields_of(meta) is not None
    assert compared > 30 and quick > 20


@pytest.mark.parametrize("env, expected", [
    ({"DICOMWEB_TOKEN": "tok-123"}, "Bearer tok-123"),
    ({"DICOMWEB_USER": "unet", "DICOMWEB_PASSWORD": "pw"}, "Basic dW5ldDpwdw=="),
    ({}, None),
])
def test_the_credentials_reach_the_server_as_the_variables_say(env, expected, monkeypatch):
    for k in dicomweb_auth.AUTH_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []

    def handle(h):
        seen.append(h.headers.get("Authorization"))
        _answer(h, 200, b"[]", {"Content-Type": "application/dicom+json"})

    server = _Server(handle)
    try:
        assert dicomweb.studies(dicomweb.parse("dicomweb+" + server.root)) == []
    finally:
        server.close()
    assert seen == [expected]


def _self_signed(folder) -> tuple[str, str]:
    import subprocess

    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_is_verified_always_and_a_ca_bundle_makes_a_private_ca_trusted(tmp_path, monkeypatch):
    import ssl

    cert, key = _self_signed(tmp_path)
    server = _Server(lambda h: _answer(h, 200, b"[]", {"Content-Type": "application/dicom+json"}))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    root = "dicomweb+" + server.root.replace("http://", "https://")
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    monkeypatch.delenv("DICOMWEB_CA_BUNDLE", raising=False)
    try:
        with pytest.raises(StorageError, match="TLS verification failed.*DICOMWEB_CA_BUNDLE"):
            dicomweb.studies(dicomweb.parse(root))  # a certificate no CA of this machine signed
        monkeypatch.setenv("DICOMWEB_CA_BUNDLE", cert)  # what --ca-bundle sets
        assert dicomweb.studies(dicomweb.parse(root)) == []
    finally:
        server.close()


# ---- answers that are not what they seem ------------------------------------------------------------
def _part10(sop_instance_uid: str = "1.2.826.0.1.3680043.8.498.1") -> bytes:
    """A small Part 10 object (a secondary capture header) with that SOP Instance UID."""
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", sop_instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, sop_instance_uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ack(*uids: str, failed: tuple[str, str] | None = None) -> bytes:
    import json

    answer = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]}} for u in uids]}}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [failed[0]]},
                                                     "00081197": {"vr": "US", "Value": [int(failed[1])]}}]}
    return json.dumps(answer).encode()


UID = "1.2.826.0.1.3680043.8.498.1"
XML_ACK = (b'<?xml version="1.0" encoding="utf-8"?><NativeDicomModel><DicomAttribute tag="00081199" vr="SQ">'
           b'<Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">' + UID.encode()
           + b"</Value></DicomAttribute></Item></DicomAttribute></NativeDicomModel>")


@pytest.mark.parametrize("status, body, content_type, words", [
    (200, _ack(UID), "application/dicom+json", None),
    (200, XML_ACK, "application/dicom+xml", None),
    (200, b"<html><body>Sign in</body></html>", "text/html", "text/html, not a DICOM answer"),
    (200, b"", "application/dicom+json", "empty body"),
    (200, _ack("1.2.3.999"), "application/dicom+json", "does not acknowledge SOP instance " + UID),
    (202, _ack(failed=(UID, "272")), "application/dicom+json", "failure reason 272"),
    (409, _ack(failed=(UID, "43264")), "application/dicom+json", "HTTP 409"),
])
def test_a_store_is_what_the_server_acknowledges(status, body, content_type, words, monkeypatch):
    """STOW-RS succeeds only when the answer is DICOM JSON or XML whose ReferencedSOPSequence
    names the object's own SOP Instance UID; the bytes go as given."""
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    received = []

    def handle(h):
        received.append(h.body)
        _answer(h, status, body, {"Content-Type": content_type})

    server = _Server(handle)
    data = _part10()
    try:
        if words is None:
            assert dicomweb.store("dicomweb+" + server.root, data, expected=[UID]) == (UID,)
        else:
            with pytest.raises(StorageError, match=words):
                dicomweb.store("dicomweb+" + server.root, data, expected=[UID])
    finally:
        server.close()
    assert len(received) == 1 and data in received[0]


def test_an_object_that_is_not_the_one_expected_is_not_sent():
    received = []
    server = _Server(lambda h: (received.append(1), _answer(h, 200, _ack(UID), {"Content-Type": "application/dicom+json"})))
    try:
        with pytest.raises(StorageError, match=f"is SOP instance {UID}, not the one expected"):
            dicomweb.store("dicomweb+" + server.root, _part10(), expected=["1.2.3.999"])
    finally:
        server.close()
    assert not received


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_the_error_names_it(status, monkeypatch):
    """A gateway that redirects a STOW-RS (to a login page, or to another host with 307): the body
    (patient data) and the credentials go nowhere else, and the error says where it pointed,
    without the query (a token may sit there)."""
    monkeypatch.setenv("DICOMWEB_TOKEN", "tok-secret")
    elsewhere_got = []
    elsewhere = _Server(lambda h: (elsewhere_got.append(h.headers.get("Authorization")),
                                   _answer(h, 200, _ack(UID), {"Content-Type": "application/dicom+json"})))
    location = elsewhere.root.replace("/dicom-web", "/login?session=tok-in-query")
    gateway = _Server(lambda h: _answer(h, status, b"", {"Location": location}))
    try:
        with pytest.raises(StorageError, match=rf"redirect \(HTTP {status} to {elsewhere.root[:-len('/dicom-web')]}"
                                               r"/login\), which is not followed") as info:
            dicomweb.store("dicomweb+" + gateway.root, _part10())
        assert "tok-in-query" not in str(info.value) and "tok-secret" not in str(info.value)
    finally:
        gateway.close()
        elsewhere.close()
    assert elsewhere_got == []


def test_a_query_answer_is_read_within_its_budget(monkeypatch):
    """A QIDO-RS page is streamed and refused past MAX_QIDO_BYTES (chunked: no length up front)."""
    monkeypatch.setattr(dicomweb, "MAX_QIDO_BYTES", 2**20)
    entry = b'{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}},'
    server = _Server(lambda h: _chunked(h, "application/dicom+json", [b"["] + [entry * 1000] * 100))
    try:
        with pytest.raises(StorageError, match="a QIDO-RS page of the DICOMweb server exceeds 1048576 bytes"):
            dicomweb.studies(dicomweb.parse("dicomweb+" + server.root))
    finally:
        server.close()


def test_a_query_answer_that_is_a_login_page_is_an_error():
    server = _Server(lambda h: _answer(h, 200, b"<html>Sign in</html>", {"Content-Type": "text/html"}))
    try:
        with pytest.raises(StorageError, match="answered text/html .*not DICOM JSON"):
            dicomweb.studies(dicomweb.parse("dicomweb+" + server.root))
    finally:
        server.close()


@pytest.mark.parametrize("uid", ["1.2/../../admin", "1.02.3", "1." + "2" * 70, "1.2.", "../x", "1..2"])
def test_uids_from_answers_are_checked_before_they_go_into_a_url(uid, monkeypatch):
    paths = []

    def handle(h):
        paths.append(h.path)
        _answer(h, 200, b'[{"0020000D": {"vr": "UI", "Value": ["%s"]}}]' % uid.encode(),
                {"Content-Type": "application/dicom+json"})

    server = _Server(handle)
    try:
        with pytest.raises(StorageError, match=r"dicomweb\+http://127.0.0.1:\d+/dicom-web: the DICOMweb server "
                                               "answered a Study Instance UID that is not a DICOM UID") as info:
            list(dicomweb.iter_instances(dicomweb.parse("dicomweb+" + server.root)))
        assert uid not in str(info.value)
    finally:
        server.close()
    assert len(paths) == 1  # nothing was asked with it


@pytest.mark.parametrize("uri", ["dicomweb+https://pacs/dicom-web/studies/1.2/../../admin",
                                 "dicomweb+https://pacs/dicom-web/studies/1.2/series/%2e%2e/x",
                                 "dicomweb+https://pacs/a/../dicom-web"])
def test_a_uri_whose_path_is_not_uids_is_refused(uri):
    with pytest.raises(ConfigError, match="named by DICOM UIDs"):
        dicomweb.parse(uri)


def test_a_retrieve_that_answers_another_instance_is_an_error(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    other = _part10("1.2.3.4.77")
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + other + b"\r\n--b--\r\n"
    server = _Server(lambda h: _answer(h, 200, body, {"Content-Type": MULTIPART}))
    try:
        with pytest.raises(StorageError, match="another instance than the one asked for"):
            dicomweb.read_instance(f"dicomweb+{server.root}/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5", 2**20)
        # The same part is the right answer where it was asked for.
        assert dicomweb.read_instance(f"dicomweb+{server.root}/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.77",
                                      2**20) == other
        with pytest.raises(StorageError, match="another study or series"):
            dicomweb.read_series([f"dicomweb+{server.root}/studies/1.2.3/series/1.2.3.9/instances/1.2.3.4.77"], 2**20)
    finally:
        server.close()


def test_a_server_that_trickles_fails_at_the_deadline_not_never(monkeypatch):
    """A byte every 0.2 s keeps every socket read alive: only the request's deadline ends it."""

    monkeypatch.setattr(dicomweb_http, "DEADLINE_SECONDS", 1.5)
    pause = threading.Event()  # not time.sleep: other tests patch it away

    def handle(h):
        h.send_response(200)
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            for _ in range(100000):
                h.wfile.write(b" ")
                h.wfile.flush()
                pause.wait(0.2)
        except OSError:
            pass

    _cut_at_the_deadline(handle)


def _cut_at_the_deadline(handle) -> None:
    """A QIDO request to a server answering with `handle` fails at the 1.5 s deadline, within 6 s."""
    import time

    server = _Server(handle)
    start = time.monotonic()
    try:
        with pytest.raises(StorageError, match="did not finish its answer within 1.5 s"):
            dicomweb.studies(dicomweb.parse("dicomweb+" + server.root))
    finally:
        server.close()
    assert time.monotonic() - start < 6


def test_a_server_that_trickles_its_headers_fails_at_the_deadline_too(monkeypatch):
    """The status line and headers a byte at a time: the connection is watched from its start."""

    monkeypatch.setattr(dicomweb_http, "DEADLINE_SECONDS", 1.5)
    pause = threading.Event()

    def handle(h):
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nX-Padding: " + b"x" * 10**5:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                pause.wait(0.2)
        except OSError:
            pass

    _cut_at_the_deadline(handle)


def test_a_server_with_endless_fresh_pages_stops_with_an_error(monkeypatch):
    from itertools import count

    monkeypatch.setattr(dicomweb, "PAGE", 2)
    monkeypatch.setattr(dicomweb, "MAX_ANSWERS", 10)
    fresh = count(1)
    asked = []

    def handle(h):
        asked.append(h.path)
        body = ("[" + ",".join(f'{{"0020000D": {{"vr": "UI", "Value": ["1.2.{next(fresh)}"]}}}}' for _ in range(2))
                + "]").encode()
        _answer(h, 200, body, {"Content-Type": "application/dicom+json"})

    server = _Server(handle)
    try:
        with pytest.raises(StorageError, match="kept answering past 10 results .*UNET_DICOMWEB_MAX_ANSWERS"):
            dicomweb.studies(dicomweb.parse("dicomweb+" + server.root))
    finally:
        server.close()
    assert len(asked) == 5


def test_netrc_credentials_never_reach_a_dicomweb_server(tmp_path, monkeypatch):
    """requests adds ~/.netrc credentials for the host it connects to, outside the transport rule
    (which looks at DICOMWEB_* only). The server listens on this machine's own non-loopback
    address, a host the rule treats as another machine; the netrc names it. Nothing arrives."""
    import ipaddress

    import psutil

    address = next((a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                    if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback), None)
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    for k in dicomweb_auth.AUTH_ENV:
        monkeypatch.delenv(k, raising=False)
    (tmp_path / ".netrc").write_text(f"machine {address}\nlogin netrc-user\npassword netrc-secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    seen = []

    def handle(h):
        seen.append(h.headers.get("Authorization"))
        _answer(h, 200, b"[]", {"Content-Type": "application/dicom+json"})

    server = _Server(handle, host=address)
    try:
        import requests

        assert requests.get(server.root + "/studies", timeout=10).status_code == 200  # requests' own habit
        assert seen == ["Basic bmV0cmMtdXNlcjpuZXRyYy1zZWNyZXQ="]
        assert dicomweb.studies(dicomweb.parse("dicomweb+" + server.root)) == []
    finally:
        server.close()
    assert seen[1:] == [None]

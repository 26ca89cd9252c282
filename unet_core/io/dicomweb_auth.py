"""Who this tool is to a DICOMweb server: credentials, TLS and where they may be sent.

Credentials come only from the environment of every process that talks to the service (on a
cluster, set on its nodes, never in a job's runtime environment):
- `DICOMWEB_TOKEN`: a bearer token;
- `DICOMWEB_USER` and `DICOMWEB_PASSWORD`: HTTP basic auth;
- `DICOMWEB_SESSION_FACTORY=module:function`: a function of the service URL returning a
  `requests.Session` with its own auth (Google Cloud Healthcare, AWS HealthImaging, Azure: see
  docs/design.md, "DICOMweb").
TLS certificates are always verified: `DICOMWEB_CA_BUNDLE` names a CA bundle for a hospital's own
CA (else `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` where set, else certifi's). Credentials never go
over plain http to another machine unless `DICOMWEB_ALLOW_HTTP=1` (`--insecure-http`): the same
rule as `unet submit`.

Nothing else in the environment speaks for this tool: every DICOMweb session has `trust_env` off,
so requests adds no `~/.netrc` credentials (they would go to any host the netrc names, over plain
http too, outside the rule above) and takes no proxy from HTTP(S)_PROXY / ALL_PROXY (a proxy sees
the images). A site that needs a proxy sets it in its `DICOMWEB_SESSION_FACTORY` session
(`session.proxies`), where it is explicit.
"""
from __future__ import annotations

import importlib
import os
from urllib.parse import urlsplit

from unet_core.errors import ConfigError
from unet_core.io.dicomweb_http import watched_adapter
from unet_core.net import is_loopback


def session_for(root: str):
    """A requests Session for the service, with the credentials and CA the environment names."""
    import requests

    factory = os.environ.get("DICOMWEB_SESSION_FACTORY", "")
    if factory:
        module, _, name = factory.partition(":")
        try:
            session = getattr(importlib.import_module(module), name)(root)
        except Exception as exc:  # a plug point of the user's: say which and why
            raise ConfigError(f"DICOMWEB_SESSION_FACTORY={factory} failed: {type(exc).__name__}: {exc}") from exc
    else:
        session = requests.Session()
        token = os.environ.get("DICOMWEB_TOKEN", "")
        user, password = os.environ.get("DICOMWEB_USER", ""), os.environ.get("DICOMWEB_PASSWORD", "")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif user:
            session.auth = (user, password)
    # No ~/.netrc, no proxies or CA from the environment behind the transport rule's back (above).
    session.trust_env = False
    bundle = (os.environ.get("DICOMWEB_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE")
              or os.environ.get("CURL_CA_BUNDLE"))
    # Every connection under the request deadline's watch; a CA bundle passed to each send (not
    # `session.verify`, which a session factory or requests' environment handling may override).
    adapter = watched_adapter()(bundle)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


AUTH_ENV = ("DICOMWEB_TOKEN", "DICOMWEB_USER", "DICOMWEB_PASSWORD", "DICOMWEB_SESSION_FACTORY", "DICOMWEB_CA_BUNDLE",
            "DICOMWEB_ALLOW_HTTP")


def has_credentials() -> bool:
    return any(os.environ.get(k) for k in AUTH_ENV[:4])


def check_transport(root: str) -> None:
    """Credentials go over https, or plain http to this machine; elsewhere only when allowed."""
    if (root.startswith("http://") and has_credentials() and not is_loopback(root)
            and os.environ.get("DICOMWEB_ALLOW_HTTP") != "1"):
        raise ConfigError(f"refusing to send DICOMweb credentials over plain http to {urlsplit(root).hostname}: "
                          "anyone on the path could read them and the images. Use dicomweb+https://, or pass "
                          "--insecure-http (DICOMWEB_ALLOW_HTTP=1) if this network is yours")

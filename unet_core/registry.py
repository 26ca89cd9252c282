"""Model bundles from an MLflow model registry: `models:/NAME/VERSION` or `models:/NAME@ALIAS`.

    parse_model_uri(text)           -> ModelRef, or None for anything that is not `models:/`
    fetch(ref, tracking_uri)        -> RegisteredBundle: the version's bundle in a local cache,
                                       checked against the identity recorded at registration

`unet train --register-model NAME` logs the bundle folder as the run's `bundle` artifact and
registers it with the tag `unet.bundle_identity` (sha256 of bundle.json + model.keras, as
`bundle.bundle_identity`). A fetched bundle whose files do not give that identity is refused,
so a cache or an artifact store that changed underneath is never used. The cache
(`$UNET_MODEL_CACHE`, default `~/.cache/unet-ray/models`) holds one folder per registry, model and
version, published by a rename once complete: a half-downloaded bundle is never read.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

from unet_core.errors import ConfigError, InputError
from unet_core.tracking import IDENTITY_TAG, check_uri, display_uri, require_client

SCHEME = "models:/"
BUNDLE_FILES = ("bundle.json", "model.keras")  # what a fetched folder must hold (unet_core/bundle.py)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,255}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@dataclass(frozen=True)
class ModelRef:
    """A registered model's version, named by number or by alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else f"{SCHEME}{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredBundle:
    """A fetched version: where its bundle lies locally and what the tables record of it."""

    ref: ModelRef
    registry: str  # the registry as shown to people (scheme, host, path)
    version: str
    run_id: str | None
    identity: str
    path: str  # local folder holding bundle.json and model.keras


def is_model_uri(text: str | None) -> bool:
    return bool(text) and text.startswith(SCHEME)


def parse_model_uri(text: str) -> ModelRef | None:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS`; None when `text` is not a registry URI.
    ConfigError, naming the form expected, for a registry URI that is neither."""
    if not is_model_uri(text):
        return None
    rest = text[len(SCHEME):]
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if _NAME.match(name) and _ALIAS.match(alias):
            return ModelRef(name=name, alias=alias)
    else:
        name, _, version = rest.rpartition("/")
        if _NAME.match(name) and version.isdigit() and int(version) > 0:
            return ModelRef(name=name, version=str(int(version)))
    raise ConfigError(f"{text!r} is not a registered model: write models:/NAME/VERSION (a version number) or "
                      "models:/NAME@ALIAS")


def cache_root() -> str:
    return os.environ.get("UNET_MODEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "unet-ray", "models")


def fetch(ref: ModelRef, tracking_uri: str | None, identity_of: Callable[[str], str],
          cache_dir: str | None = None) -> RegisteredBundle:
    """The registered version's bundle, downloaded once into the cache and checked with
    `identity_of(folder)` (bundle.bundle_identity) against the identity recorded at registration."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ConfigError(f"{ref.uri} needs the registry's address: give --tracking-uri or set MLFLOW_TRACKING_URI")
    check_uri(tracking_uri)
    require_client()
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    shown = display_uri(tracking_uri)
    try:
        mv = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
              else client.get_model_version(ref.name, ref.version))
    except MlflowException as exc:
        raise ConfigError(f"{ref.uri}: not found in the registry at {shown} ({exc.error_code})") from exc
    version = str(mv.version)
    expected = (mv.tags or {}).get(IDENTITY_TAG)
    key = hashlib.sha256(shown.encode()).hexdigest()[:12]
    folder = os.path.join(cache_dir or cache_root(), key, _safe(ref.name), version)
    if not _holds(folder, expected, identity_of):
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(folder))
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp, tracking_uri=tracking_uri)
            if not _holds(local, expected, identity_of):
                raise InputError(f"{ref.uri} (version {version}): the registered files are not the bundle that was "
                                 f"registered (identity differs from {IDENTITY_TAG}); re-register the model",
                                 uri=ref.uri)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(local, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return RegisteredBundle(ref=ref, registry=shown, version=version, run_id=mv.run_id or None,
                            identity=expected or identity_of(folder), path=folder)


def _holds(folder: str, expected: str | None, identity_of: Callable[[str], str]) -> bool:
    """A complete bundle folder whose identity is `expected` (any identity when none was recorded)."""
    if not all(os.path.isfile(os.path.join(folder, f)) for f in BUNDLE_FILES):
        return False
    return expected is None or identity_of(folder) == expected


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


__all__ = ["IDENTITY_TAG", "ModelRef", "RegisteredBundle", "cache_root", "fetch", "is_model_uri", "parse_model_uri"]

"""Experiment tracking in MLflow: what a training run logs, from rank 0 only, and never a reason
for a training to stop.

    Tracker.open(cfg, tags)          -> a tracker on a new run, or on `cfg.run_id` when resuming
    tracker.log_params(options)      every option of the run, nested dicts flattened with dots
    tracker.log_metrics(metrics, n)  per-epoch numbers, as they happen
    tracker.log_folder(path, name)   the bundle folder, curves.png, report.html as artifacts
    tracker.register(name)           the logged bundle as a new version of a registered model
    tracker.close(status)

A server that is down, refuses or times out costs one warning line: the tracker then stops
calling it (`lost` holds the reason) and the training goes on. Credentials come only from
MLflow's own environment variables (`MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME` /
`_PASSWORD`); they are never logged, and a tracking URI that holds a user or password is refused.

The client is `mlflow-skinny` (the `tracking` extra); without it, `--tracking-uri` says what to
install. The MLflow client retries a refused connection for minutes by default; unless the user
set them, requests here are retried twice with a 60 s timeout, so a dead server is noticed within
a minute and only once; a run created twice by a retried request is made
one again (TOKEN_TAG).
"""
from __future__ import annotations

import logging
import math
import os
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from unet_core.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_EXPERIMENT = "unet"
BUNDLE_ARTIFACT = "bundle"  # where the bundle folder goes under a run's artifacts
IDENTITY_TAG = "unet.bundle_identity"  # a model version's bundle identity (bundle.bundle_identity)
INSTALL_HINT = "experiment tracking needs the MLflow client: pip install 'unet-ray[tracking]'"
# MLflow's own limits (mlflow.utils.validation): longer values are refused by the server.
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# Quick failure unless the user chose otherwise (MLflow's defaults: 7 retries, 120 s).
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
TOKEN_TAG = "unet.run_token"  # makes creating a run idempotent (a retried POST can create two)


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how a run is tracked; `uri` None means no tracking."""

    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    run_id: str | None = None  # continue this run (a resumed training)
    parent_run_id: str | None = None  # a trial of a search: a child run of the search's run
    register_model: str | None = None

    def __post_init__(self) -> None:
        if self.uri is not None:
            check_uri(self.uri)
        if self.register_model is not None and not self.register_model.strip():
            raise ConfigError("--register-model needs a model name")

    @classmethod
    def from_options(cls, uri: str | None, experiment: str | None, run_name: str | None,
                     register_model: str | None = None, env: dict[str, str] | None = None) -> TrackingConfig:
        """The command line's values; the URI falls back to MLFLOW_TRACKING_URI."""
        env = os.environ if env is None else env
        uri = uri or env.get("MLFLOW_TRACKING_URI") or None
        if register_model and not uri:
            raise ConfigError("--register-model needs a tracking server: give --tracking-uri or set MLFLOW_TRACKING_URI")
        return cls(uri=uri, experiment=experiment or DEFAULT_EXPERIMENT, run_name=run_name,
                   register_model=register_model)


def check_uri(uri: str) -> None:
    """Refuse a tracking URI that carries credentials (they would be logged and shown)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        raise ConfigError("the tracking URI must not hold a user or password: set MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
    if parts.scheme not in ("http", "https", "file", "sqlite", "databricks", ""):
        raise ConfigError(f"tracking URI scheme {parts.scheme!r} is not one MLflow serves (http, https, file, sqlite)")


def require_client() -> None:
    """ConfigError naming the extra when the MLflow client is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc


def display_uri(uri: str) -> str:
    """The URI as shown to people: scheme, host and path, never a query string."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def flatten(options: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"depth": 4}} -> {"model.depth": "4"}; None and lists as their text."""
    out: dict[str, str] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            text = str(value)
            out[name] = text if len(text) <= MAX_PARAM_VALUE else text[:MAX_PARAM_VALUE - 3] + "..."
    return out


@dataclass
class Tracker:
    """One MLflow run, or nothing once `lost`. Every call is safe to make."""

    cfg: TrackingConfig
    run_id: str | None = None
    experiment_id: str | None = None
    lost: str | None = None
    warn: Callable[[str], None] = field(default=lambda line: log.warning(line), repr=False)
    _client: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, cfg: TrackingConfig, tags: dict[str, str] | None = None,
             warn: Callable[[str], None] | None = None) -> Tracker:
        tracker = cls(cfg) if warn is None else cls(cfg, warn=warn)
        if cfg.uri is None:
            return tracker
        require_client()
        for key, value in _CLIENT_ENV.items():
            os.environ.setdefault(key, value)
        tracker._guard("start the run", lambda: tracker._start(dict(tags or {})))
        return tracker

    @property
    def active(self) -> bool:
        return self.run_id is not None and self.lost is None

    def _start(self, tags: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        self._client = MlflowClient(tracking_uri=self.cfg.uri, registry_uri=self.cfg.uri)
        if self.cfg.run_id:
            run = self._client.get_run(self.cfg.run_id)
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            self._client.update_run(self.run_id, status="RUNNING")
            for key, value in tags.items():
                self._client.set_tag(self.run_id, key, value)
            return
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        self.experiment_id = exp.experiment_id if exp else self._client.create_experiment(self.cfg.experiment)
        tags = dict(tags)
        if self.cfg.run_name:
            tags[MLFLOW_RUN_NAME] = self.cfg.run_name
        if self.cfg.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.cfg.parent_run_id
        token = uuid.uuid4().hex
        tags[TOKEN_TAG] = token
        run = self._client.create_run(self.experiment_id, tags=tags, run_name=self.cfg.run_name)
        # The client retries a POST whose answer timed out, and the server may have created the run
        # both times: keep the first of the runs this tracker made (its token proves it), delete the rest.
        made = self._client.search_runs([self.experiment_id], filter_string=f"tags.`{TOKEN_TAG}` = '{token}'",
                                        order_by=["attributes.start_time ASC"])
        for extra in made[1:]:
            self._client.delete_run(extra.info.run_id)
        self.run_id = made[0].info.run_id if made else run.info.run_id

    def _guard(self, what: str, call: Callable[[], T]) -> T | None:
        if self.lost is not None or self.cfg.uri is None:
            return None
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a training: any failure is "lost"
            self.lost = f"could not {what} at {display_uri(self.cfg.uri)}: {_reason(exc)}"
            self.warn(f"tracking lost: {self.lost}; training goes on without it")
            return None

    def log_params(self, options: dict[str, Any]) -> None:
        if not self.active and self.run_id is None:
            return
        from mlflow.entities import Param

        flat = flatten(options)
        if self.cfg.run_id:  # a resumed run keeps the params it was started with (MLflow refuses a change)
            logged = self._guard("read the run", lambda: self._client.get_run(self.run_id).data.params) or {}
            flat = {k: v for k, v in flat.items() if k not in logged}
        items = sorted(flat.items())
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = [Param(k, v) for k, v in items[start:start + MAX_PARAMS_PER_BATCH]]
            self._guard("log the run's options", lambda chunk=chunk: self._client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in sorted(metrics.items())
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            chunk = batch[start:start + MAX_METRICS_PER_BATCH]
            self._guard(f"log epoch {step}'s metrics", lambda chunk=chunk: self._client.log_batch(self.run_id, metrics=chunk))

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._guard("tag the run", lambda key=key, value=value: self._client.set_tag(self.run_id, key, value))

    def log_folder(self, local_dir: str, artifact_path: str | None = None) -> None:
        if self.active:
            self._guard("upload artifacts", lambda: self._client.log_artifacts(self.run_id, local_dir, artifact_path))

    def log_file(self, local_file: str, artifact_path: str | None = None) -> None:
        if self.active:
            self._guard("upload an artifact", lambda: self._client.log_artifact(self.run_id, local_file, artifact_path))

    def register(self, name: str, identity: str) -> str | None:
        """The run's logged bundle (artifact folder BUNDLE_ARTIFACT) as a new version of `name`;
        the version's `IDENTITY_TAG` lets a reader check what it downloads. Returns the version."""
        if not self.active:
            return None

        def _register() -> str:
            from mlflow.exceptions import MlflowException

            try:
                self._client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            run = self._client.get_run(self.run_id)
            source = f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT}"
            version = self._client.create_model_version(name, source, run_id=self.run_id,
                                                        tags={IDENTITY_TAG: identity})
            return str(version.version)

        return self._guard(f"register the model {name!r}", _register)

    def close(self, status: str = "FINISHED") -> None:
        if self.active:
            self._guard("end the run", lambda: self._client.set_terminated(self.run_id, status=status))


def _reason(exc: BaseException) -> str:
    """A short reason without a traceback; MLflow's messages can hold the request's URL, never
    credentials (those travel in headers)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


__all__ = ["BUNDLE_ARTIFACT", "DEFAULT_EXPERIMENT", "IDENTITY_TAG", "Tracker", "TrackingConfig", "check_uri",
           "display_uri", "flatten", "require_client"]

"""Options every job shares, and option values from a config file.

    add_ray_args / add_limit_args   the --address / --num-cpus and safety-limit options
    parse_with_config(parser, argv) --config FILE.yaml|json values, checked as the command line's,
                                    as defaults; the command line wins
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import yaml

from unet_core.config import Limits
from unet_core.errors import ConfigError
from unet_core.io import storage
from unet_core.io.storage import PRIVATE_OUTPUTS_ENV


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None,
        help="Ray cluster to attach to: 'auto', 'ray://HEAD:10001' or HEAD:6379. Default: RAY_ADDRESS if set, "
             "else a local Ray instance started in this process",
    )
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: this machine's); ignored with --address")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--private-outputs", action="store_true",
                        help="local outputs readable by their owner only (0600); by default they follow the umask "
                             "(0644 under the usual 022), so the team on a shared disk can open the reports")


def apply_output_args(args: argparse.Namespace) -> None:
    """Before Ray starts: every worker of the job writes with the same mode."""
    if getattr(args, "private_outputs", False):
        os.environ[PRIVATE_OUTPUTS_ENV] = "1"


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    g = parser.add_argument_group("safety limits for untrusted input")
    g.add_argument("--max-volume-bytes", type=int, default=d.max_volume_bytes, help="decoded voxels of one volume")
    g.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes, help="one stored object")
    g.add_argument("--max-decompressed-bytes", type=int, default=d.max_decompressed_bytes,
                   help="gzip / zip expansion of one member")
    g.add_argument("--max-zip-members", type=int, default=d.max_zip_members)


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_volume_bytes=args.max_volume_bytes, max_file_bytes=args.max_file_bytes,
                  max_decompressed_bytes=args.max_decompressed_bytes, max_zip_members=args.max_zip_members)


def load_config_file(path: str | None) -> dict[str, Any]:
    """A JSON or YAML file of option values (keys as the long option names, '-' or '_')."""
    return {k.replace("-", "_"): v for k, v in _read_mapping(path).items()}


def _read_mapping(path: str | None) -> dict[str, Any]:
    """The file's mapping as written (keys unchanged); {} without a file."""
    if not path:
        return {}
    text = storage.read_bytes(path).decode()
    try:
        data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: "
                          f"{exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of option names to values")
    return {str(k): v for k, v in data.items()}


# Options whose value in a config file may be a mapping instead of a file name (the command line
# names a file holding that mapping): jobs/segment.py reads `select` either way.
MAPPING_OPTIONS = frozenset({"select"})
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)
_NEVER_FROM_FILE = (argparse._HelpAction, argparse._VersionAction)


class ConfigValueError(Exception):
    """One value of a config file that the command line would refuse (the message says why)."""


def _scalar_token(value: Any, option: str) -> str:
    """A YAML/JSON scalar as the command line would spell it; booleans and containers refused."""
    if isinstance(value, bool):
        raise ConfigValueError(f"{option} takes a value, not true/false")
    if isinstance(value, (list, dict)) or value is None:
        raise ConfigValueError(f"{option} takes one value, not {_kind(value)}")
    return str(value)


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def config_value(parser: argparse.ArgumentParser, action: argparse.Action, value: Any) -> Any:
    """A config file's value for `action`, converted and checked as the command line's would be:
    its type, choices and nargs; on/off options take real booleans only (`qc: "false"` is refused,
    never read as true). Raises ConfigValueError."""
    option = max(action.option_strings, key=len) if action.option_strings else action.dest
    if isinstance(action, _NEVER_FROM_FILE) or action.dest == "config":
        raise ConfigValueError(f"{option} cannot be set from a config file")
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(value, bool):
            raise ConfigValueError(f"{option} is an on/off option: true or false, not {value!r}")
        return action.const if value else action.default
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigValueError(f"{option} counts: a whole number of at least 0, not {value!r}")
        return value
    if action.dest in MAPPING_OPTIONS and isinstance(value, dict):
        return value
    many = action.nargs not in (None, argparse.OPTIONAL) or isinstance(action, argparse._AppendAction)
    if many:
        items = value if isinstance(value, list) else [value]
        tokens = [_scalar_token(v, option) for v in items]
        if action.nargs == argparse.ONE_OR_MORE and not tokens:
            raise ConfigValueError(f"{option} needs at least one value")
        if isinstance(action.nargs, int) and len(tokens) != action.nargs:
            raise ConfigValueError(f"{option} takes {action.nargs} values, not {len(tokens)}")
    else:
        tokens = [_scalar_token(value, option)]
    try:
        if isinstance(action, argparse._AppendAction):
            return [parser._get_values(action, [t]) for t in tokens]
        return parser._get_values(action, tokens)
    except argparse.ArgumentError as exc:
        raise ConfigValueError(f"{option}: {exc.message}") from None


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a config file may use: each option's dest, and its long names without '--'
    ('-' or '_')."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        keys.setdefault(action.dest, action)
        for name in action.option_strings:
            if name.startswith("--"):
                keys.setdefault(name[2:].replace("-", "_"), action)
    return keys


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; values from `--config FILE` become defaults, so the command line still wins.
    Each value is checked as the command line checks it (config_value), a required option may come
    from the file, and an unknown key or a bad value is a usage error (exit 2) naming the file,
    the key and the problem."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    try:
        values = _read_mapping(known.config)
    except ConfigError as exc:  # a store that fails stays a storage error (exit 5)
        parser.error(str(exc))
    keys = _actions_by_key(parser)
    unknown = sorted(k for k in values if k.replace("-", "_") not in keys)
    if unknown:
        parser.error(f"unknown keys in {known.config}: {unknown}")
    defaults: dict[str, Any] = {}
    for key, value in values.items():
        action = keys[key.replace("-", "_")]
        if action.dest in defaults:
            parser.error(f"{known.config}: {key}: {action.dest} is given twice in the file")
        try:
            defaults[action.dest] = config_value(parser, action, value)
        except ConfigValueError as exc:
            parser.error(f"{known.config}: {key}: {exc}")
        action.required = False  # given by the file; the command line may still override it
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def add_dicomweb_args(parser: argparse.ArgumentParser, sending_only: bool = False) -> None:
    """DICOMweb reading and delivery (unet_core/io/dicomweb.py; credentials only from DICOMWEB_*)."""
    g = parser.add_argument_group("DICOMweb (README: \"Reading from and delivering to a PACS\")")
    if not sending_only:
        g.add_argument("--dicomweb-query", default=None, metavar="FILE.yaml",
                       help="QIDO-RS filters for dicomweb+https:// inputs (StudyDate, Modality, AccessionNumber, "
                            "...), added to those in the URI (out of the shell history; recorded with the inputs in layout.json)")
        g.add_argument("--send", "--send-seg", dest="send_seg", default=None, metavar="URL",
                       help="store every DICOM object the run makes (SEG, RTSTRUCT) at this DICOMweb service "
                            "(STOW-RS) once written; implies --dicom-seg unless --rtstruct is given. A re-run "
                            "sends what was not sent (--send-seg: the same)")
    g.add_argument("--dicomweb-concurrency", type=int, default=4,
                   help="at most this many requests at once to a DICOMweb server (a PACS is a shared clinical "
                        "system); with a DICOMweb input it also caps the scan tasks and the volumes in flight")
    g.add_argument("--ca-bundle", default=None, metavar="FILE",
                   help="CA certificates to verify the DICOMweb server's TLS certificate (DICOMWEB_CA_BUNDLE)")
    g.add_argument("--insecure-http", action="store_true",
                   help="allow DICOMweb credentials over plain http to another machine (DICOMWEB_ALLOW_HTTP=1)")


def apply_dicomweb_args(args: argparse.Namespace, services: list[str]) -> None:
    """Before anything is written or Ray starts: the settings every worker shares go to the
    environment, and each service named is asked one small question (wrong credentials, a wrong
    URL or a server that is down fail the job here, exit 5, having written nothing)."""
    from unet_core.io import dicomweb

    if args.dicomweb_concurrency < 1:
        raise ConfigError("--dicomweb-concurrency must be at least 1")
    if args.ca_bundle:
        if not os.path.isfile(args.ca_bundle):
            raise ConfigError(f"--ca-bundle {args.ca_bundle}: no such file")
        os.environ["DICOMWEB_CA_BUNDLE"] = os.path.abspath(args.ca_bundle)
    if args.insecure_http:
        os.environ["DICOMWEB_ALLOW_HTTP"] = "1"
    for uri in services:
        dicomweb.probe(uri)


def dicomweb_inputs(args: argparse.Namespace) -> list[str]:
    """`--input` with --dicomweb-query's filters added to each DICOMweb service (validated)."""
    from unet_core.io import dicomweb

    query = load_config_file(args.dicomweb_query) if args.dicomweb_query else None
    out = []
    for uri in args.input:
        if dicomweb.is_dicomweb(uri):
            out.append(dicomweb.with_query(uri, query or {}))
        elif query is not None:
            raise ConfigError(f"--dicomweb-query applies to dicomweb+https:// inputs; {uri} is not one")
        else:
            out.append(uri)
    return out

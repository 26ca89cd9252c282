"""Options every job shares, and option values from a config file.

    add_ray_args / add_limit_args   the --address / --num-cpus and safety-limit options
    parse_with_config(parser, argv) --config FILE.yaml|json values as defaults; the command line wins
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
    if not path:
        return {}

    text = storage.read_bytes(path).decode()
    if path.endswith((".yaml", ".yml")):
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; values from `--config FILE` become defaults, so the command line still wins.
    An unknown key in the file is an error naming it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    values = load_config_file(known.config)
    dests = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - dests)
    if unknown:
        parser.error(f"unknown keys in {known.config}: {unknown}")
    parser.set_defaults(**values)
    return parser.parse_args(argv)


def add_dicomweb_args(parser: argparse.ArgumentParser, sending_only: bool = False) -> None:
    """DICOMweb reading and delivery (unet_core/io/dicomweb.py; credentials only from DICOMWEB_*)."""
    g = parser.add_argument_group("DICOMweb (README: \"Reading from and delivering to a PACS\")")
    if not sending_only:
        g.add_argument("--dicomweb-query", default=None, metavar="FILE.yaml",
                       help="QIDO-RS filters for dicomweb+https:// inputs (StudyDate, Modality, AccessionNumber, "
                            "...), added to those in the URI (out of the shell history; recorded with the inputs in layout.json)")
        g.add_argument("--send-seg", default=None, metavar="URL",
                       help="store each DICOM SEG at this DICOMweb service (STOW-RS) once written; implies "
                            "--dicom-seg. A re-run sends what was not sent")
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

"""Which objects under an output this tool wrote, so that a job deletes only those.

A user points `unet segment` and `unet prepare` at folders and buckets that may hold the only copy
of something. So, for each kind of output (`SEGMENT_OUTPUT`, `PREPARE_OUTPUT`: the names it gives):

- An output prefix is this tool's when it holds its marker (`layout.json`, `manifest.json`). A
  first run into a prefix that holds objects but no marker is refused unless every object there
  has a name this tool gives (an interrupted first run): `check_output`.
- `--overwrite` and a first run remove objects by name only: a file in `masks/` that this tool
  would not have named (ground truth kept there, say) stays, and is reported: `delete_owned`.
- An output inside an input is never listed as input (`OutputNames.excludes`); an input inside
  the output's own folders is refused (`check_inputs`).
- An own folder that is a symbolic link (`masks -> /elsewhere`) is refused before anything is
  written or removed: deleting by name through it would remove another folder's files
  (`check_own_folders`, called by `check_output` and `delete_owned`).
- Unfinished temporaries (`.tmp-*`) of a killed run are swept only where the job writes: the
  output's top level and its own folders, never an input folder nested under the output
  (`sweep_temporaries`).
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from unet_core.errors import ConfigError, NotFoundError
from unet_core.io import listing, storage

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class OutputKind:
    """The names one job gives below its output."""

    job: str
    marker: str  # the file that makes a prefix this job's output
    folders: dict[str, re.Pattern]  # its own folders, and the names it gives in each (relative)
    files: tuple[str, ...]  # its own files at the top
    overwrite: tuple[str, ...]  # the folders `--overwrite` clears

    def owns(self, relative: str) -> bool:
        """Whether an object at `relative` (below the output) has a name this job gives."""
        if relative in self.files:
            return True
        pattern = self.folders.get(relative.split("/", 1)[0])
        return bool(pattern and pattern.fullmatch(relative))


# Volume ids: "dcm-", "obj-" or "nii-" and 16 hex digits; layout version 2 named NIfTI volumes
# "nii-<sanitised stem>-<8 hex>" (still this tool's, so --overwrite removes them).
VOLUME_ID = r"(?:(?:dcm|obj|nii)-[0-9a-f]{16}|nii-[A-Za-z0-9_.-]{1,80}-[0-9a-f]{8})"
PART = r"part-\d{5}\.parquet"
SEGMENT_OUTPUT = OutputKind(
    "unet segment", "layout.json",
    {"series_index": re.compile(rf"series_index/{PART}"), "volumes": re.compile(rf"volumes/{PART}"),
     "plan": re.compile(rf"plan/{PART}"), "records": re.compile(rf"records/(?:ok|error)/{VOLUME_ID}\.parquet"),
     "masks": re.compile(rf"masks/{VOLUME_ID}\.nii\.gz"), "slices": re.compile(rf"slices/{VOLUME_ID}\.parquet"),
     "qc": re.compile(rf"qc/{VOLUME_ID}\.png"), "seg": re.compile(rf"seg/{VOLUME_ID}\.dcm"),
     "rtstruct": re.compile(rf"rtstruct/{VOLUME_ID}\.dcm"),
     "report": re.compile(r"report/[a-z0-9_]+\.png")},
    ("layout.json", "summary.json", "report.html", "evaluation.parquet", "plan.parquet"),
    ("series_index", "volumes", "plan", "records", "masks", "slices", "qc", "seg", "rtstruct"))
# Case ids are sanitised names ([A-Za-z0-9_.-]); Ray Data names the shards it writes.
PREPARE_OUTPUT = OutputKind(
    "unet prepare", "manifest.json",
    {"cases": re.compile(r"cases/[A-Za-z0-9_.-]{1,200}\.json"),
     "slices": re.compile(r"slices/split=(?:train|val)/[A-Za-z0-9_.-]{1,200}\.parquet")},
    ("manifest.json", "fingerprint.json"), ("cases", "slices"))
# `unet demo` writes every object below these folders (synthetic inputs, and the outputs of the
# jobs it runs); its marker is written before anything else, and a re-run removes only these.
DEMO_FOLDERS = ("labelled", "archive", "truth", "prepared", "model", "model.runs", "segmented", "pictures")
DEMO_OUTPUT = OutputKind(
    "unet demo", "demo.json",
    {folder: re.compile(rf"{re.escape(folder)}/.+") for folder in DEMO_FOLDERS}, ("demo.json",), DEMO_FOLDERS)
OVERWRITE_FOLDERS = SEGMENT_OUTPUT.overwrite


def is_owned(relative: str, kind: OutputKind = SEGMENT_OUTPUT) -> bool:
    return kind.owns(relative)


def _norm(uri: str) -> str:
    """A comparable form: local paths absolute with symlinks resolved, s3:// without repeated or
    trailing slashes."""
    if storage.is_s3(uri):
        bucket_key = uri[len("s3://"):]
        return "s3://" + re.sub(r"/+", "/", bucket_key).rstrip("/")
    if storage.is_remote(uri):
        return uri.rstrip("/")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.realpath(os.path.abspath(path))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


@dataclass(frozen=True)
class OutputNames:
    """The output as the listing of each input spells it (`prefixes`), and whether it lies inside
    an input (`inside_input`). An output inside an input is not listed at all; otherwise (an input
    that lies in the output's prefix, outside its own folders) only the names this tool gives are
    left out."""

    prefixes: tuple[str, ...]
    inside_input: bool = True

    @classmethod
    def of(cls, output: str, inputs: tuple[str, ...]) -> OutputNames:
        real_out = _norm(output)
        prefixes = {output.rstrip("/"), real_out}
        inside = False
        for given in inputs:
            real_in = _norm(given)
            if _inside(real_out, real_in) and real_out != real_in:
                inside = True
                if not storage.is_remote(given) and real_in != given.rstrip("/"):  # reached through a symlink
                    prefixes.add(given.rstrip("/") + real_out[len(real_in):])
        return cls(tuple(sorted(prefixes)), inside)

    def excludes(self, uri: str, kind: OutputKind = SEGMENT_OUTPUT) -> bool:
        """Whether a listed object is the output's, not an input's."""
        for prefix in self.prefixes:
            if uri.startswith(prefix + "/"):
                return self.inside_input or kind.owns(uri[len(prefix) + 1:])
        return False


def check_inputs(inputs: tuple[str, ...], output: str, kind: OutputKind = SEGMENT_OUTPUT) -> None:
    """An input must not be the output, nor lie inside the output's own folders."""
    out = _norm(output)
    nested = OutputNames.of(output, inputs).inside_input
    for given in inputs:
        real = _norm(given)
        if real == out:
            raise ConfigError(f"--input {given} and --output {output} are the same place; write the output elsewhere")
        if _inside(real, out):
            first = real[len(out) + 1:].split("/", 1)[0]
            if nested:
                raise ConfigError(f"--input {given} lies inside --output {output}, which lies inside another input; "
                                  "write the output elsewhere")
            if first in kind.folders or first in kind.files:
                raise ConfigError(f"--input {given} lies inside the output's own folder {first}/ of {output}, which "
                                  "this tool writes and clears; move the input, or write the output elsewhere")


def _objects(prefix: str) -> Iterator[str]:
    """URIs below a prefix, streamed (nothing when it does not exist); hidden names are skipped. A
    listing that fails otherwise (access denied, an outage) raises: an ownership check that saw
    nothing must not pass."""
    try:
        for entry in listing.iter_objects(prefix, recursive=True):
            yield entry.uri
    except NotFoundError:
        return


def check_output(output: str, kind: OutputKind = SEGMENT_OUTPUT, inputs: tuple[str, ...] = (),
                 examples: int = 5) -> bool:
    """A first run (no marker) may write into an empty prefix, or one that holds only objects this
    job names (an interrupted first run) or the job's own inputs; anything else is refused, naming
    a few of the objects found. With its marker the prefix is this job's. Returns whether the
    marker is there. An own folder that is a symbolic link is refused (check_own_folders)."""
    output = storage.absolute(output)  # as the listing names what it finds (relative names were cut wrong)
    check_own_folders(output, kind)
    if storage.exists(storage.join(output, kind.marker)):
        return True
    foreign = []
    inside = [i.rstrip("/") + "/" for i in inputs]
    for uri in _objects(output):
        relative = uri[len(output.rstrip("/")) + 1:]
        if not kind.owns(relative) and not any(uri.startswith(i) for i in inside):
            foreign.append(relative)
            if len(foreign) >= examples:
                break
    if foreign:
        raise ConfigError(
            f"--output {output} already holds objects that `{kind.job}` did not write (for example "
            f"{', '.join(foreign)}) and no {kind.marker}: it is not an output of this tool. Choose an empty or new "
            f"prefix, or an existing `{kind.job}` output")
    return False


def owned_objects(output: str, kind: OutputKind = SEGMENT_OUTPUT) -> Iterator[str]:
    """URIs of the objects this job names in its own folders of the output, streamed."""
    output = storage.absolute(output)  # as the listing names what it finds
    for folder in kind.overwrite:
        prefix = storage.join(output, folder)
        for uri in _objects(prefix):
            if kind.owns(posixpath.join(folder, uri[len(prefix.rstrip("/")) + 1:])):
                yield uri


def delete_owned(output: str, folders: tuple[str, ...], kind: OutputKind = SEGMENT_OUTPUT,
                 check: Callable[[], None] | None = None) -> tuple[int, int]:
    """Remove the objects this tool names in `folders` of the output; anything else there stays,
    and is logged. Returns (removed, left). An own folder that is a symbolic link is refused before
    anything is removed (check_own_folders). `check` runs before each removal: the run's
    `Lease.check`, which raises LeaseLost once another run holds the output."""
    output = storage.absolute(output)  # as the listing names what it finds
    check_own_folders(output, kind)
    removed = left = 0
    for folder in folders:
        prefix = storage.join(output, folder)
        for uri in list(_objects(prefix)):
            relative = posixpath.join(folder, uri[len(prefix.rstrip("/")) + 1:])
            if kind.owns(relative):
                if check is not None:
                    check()
                storage.delete(uri)
                removed += 1
            else:
                left += 1
                log.warning("left %s in place: this tool did not name it, so it does not remove it", uri)
        if not storage.is_s3(prefix):
            _remove_empty_folders(storage.resolve(prefix)[1])
    return removed, left


def _remove_empty_folders(path: str) -> None:
    for folder, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)  # only succeeds when empty
        except OSError:
            pass


def check_own_folders(output: str, kind: OutputKind = SEGMENT_OUTPUT) -> None:
    """A local output's own folders (`masks/`, `seg/`, ...) must be real folders: through a symbolic
    link, `--overwrite` would delete (and a run would write) another folder's files by name.
    Raises ConfigError naming the link and where it points; object stores have no links."""
    if storage.is_remote(output):
        return
    root = storage.resolve(output)[1]
    for folder in sorted(set(kind.folders) | set(kind.overwrite)):
        path = os.path.join(root, folder)
        if os.path.islink(path):
            raise ConfigError(
                f"{path} is a symbolic link (to {os.readlink(path)}), not a folder of this output: this tool "
                f"writes and removes files by name in {folder}/, so it refuses to go through a link. Remove the "
                "link, or write the output elsewhere")


TEMPORARY_PREFIX = ".tmp-"  # storage.write_bytes' unfinished files, and its write probes


def sweep_temporaries(output: str, kind: OutputKind = SEGMENT_OUTPUT) -> int:
    """Remove the `.tmp-*` files a killed writer left where this job writes: directly in a local
    output and anywhere in its own folders (links not followed, an own folder that is a link
    refused). Input folders nested under the output are never entered. Object stores never show an
    unfinished upload: nothing to sweep. Returns how many went."""
    if storage.is_remote(output):
        return 0
    root = storage.resolve(output)[1]
    if not os.path.isdir(root):
        return 0
    check_own_folders(output, kind)
    swept = _sweep(root, [e.name for e in os.scandir(root) if e.is_file(follow_symlinks=False)])
    for folder in sorted(set(kind.folders) | set(kind.overwrite)):
        for current, _, names in os.walk(os.path.join(root, folder)):  # os.walk follows no links
            swept += _sweep(current, names)
    return swept


def _sweep(folder: str, names: list[str]) -> int:
    swept = 0
    for name in names:
        if name.startswith(TEMPORARY_PREFIX):
            try:
                os.unlink(os.path.join(folder, name))
                swept += 1
            except FileNotFoundError:  # another sweeper, or the writer finished it
                pass
    return swept

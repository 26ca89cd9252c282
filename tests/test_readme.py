"""Every `unet` command shown in README.md and cluster/README.md parses with its job's own parser
(and for `unet submit`, the job it carries parses too). The commands themselves run in the tests of
each job and in the demo; this keeps the documentation from drifting away from the options."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shell_commands(path: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command.startswith("unet "):
                commands.append(command)
    return commands


def parse(argv: list[str]) -> None:
    job, rest = argv[0], argv[1:]
    args = importlib.import_module(f"jobs.{job}").build_parser().parse_args(rest)
    if job == "submit" and args.job:
        carried = args.job[1:] if args.job[0] == "--" else args.job
        parse(carried)


DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md"]
COMMANDS = [(doc.relative_to(ROOT).as_posix(), c) for doc in DOCS for c in shell_commands(doc)]


def test_the_readmes_show_every_job():
    shown = {shlex.split(c)[1] for _, c in COMMANDS}
    assert {"prepare", "train", "segment", "evaluate", "submit"} <= shown


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_readme_command_parses(doc, command):
    argv = shlex.split(command.replace("raysubmit_...", "raysubmit_x").replace("s3://...", "s3://x/y"))
    parse(argv[1:])


def test_make_targets_named_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z0-9-]+)", (ROOT / "README.md").read_text())):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target

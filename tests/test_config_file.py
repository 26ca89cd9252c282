"""`--config FILE` (jobs/options.py parse_with_config): every value is checked as the command line
checks it (types, choices, on/off options taking real booleans, nargs), a required option may come
from the file, the command line wins, and a bad value is a usage error (exit 2) naming the file,
the key and the problem. Checked for every job whose parser reads --config."""
from __future__ import annotations

import argparse
import importlib
import json

import pytest

from jobs import segment
from jobs.cli import JOBS
from jobs.options import parse_with_config


def _jobs_with_config() -> dict:
    """Every job of `unet` whose parser takes --config (found, not listed: a job that gains the
    option is checked here at once)."""
    found = {}
    for name in JOBS:
        module = importlib.import_module(f"jobs.{name}")
        build = getattr(module, "build_parser", None)
        if build is not None and any(a.dest == "config" for a in build()._actions):
            found[name] = module
    return found


JOBS_WITH_CONFIG = _jobs_with_config()
SEGMENT_REQUIRED = {"input": ["in-a", "in-b"], "model": "bundle", "output": "out"}


def _file(tmp_path, values: dict, name: str = "options.yaml") -> str:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(values) if name.endswith(".yaml") else json.dumps(values))
    return str(path)


def _refused(capsys, parser: argparse.ArgumentParser, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse_with_config(parser, argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("key, value, problem", [
    ("precision", "float64", r"--precision: invalid choice: 'float64'"),
    ("qc", "false", r"--qc is an on/off option: true or false, not 'false'"),
    ("qc", 1, r"--qc is an on/off option"),
    ("max_predictors", 2.5, r"--max-predictors: invalid int value: '2.5'"),
    ("max-predictors", True, r"--max-predictors takes a value, not true/false"),
    ("batch_size", [4, 8], r"--batch-size takes one value, not a list"),
    ("threshold", "half", r"--threshold: invalid float value: 'half'"),
    ("input", [], r"--input needs at least one value"),
    ("output", None, r"--output takes one value, not null"),
    ("config", "other.yaml", r"--config cannot be set from a config file"),
    ("help", True, r"--help cannot be set from a config file"),
])
def test_a_value_the_command_line_refuses_is_refused_naming_file_key_and_problem(tmp_path, capsys, key, value,
                                                                                  problem):
    import re

    path = _file(tmp_path, {**SEGMENT_REQUIRED, key: value})
    err = _refused(capsys, segment.build_parser(), ["--config", path])
    assert re.search(re.escape(f"{path}: {key}: ") + problem, err), err


def test_the_issues_three_values_are_refused_by_the_job_with_exit_2(tmp_path, capsys):
    for bad in ({"precision": "float64"}, {"qc": "false"}, {"max_predictors": 2.5}):
        path = _file(tmp_path, {**SEGMENT_REQUIRED, **bad})
        with pytest.raises(SystemExit) as exit_:  # before anything is read or written
            segment.main(["--config", path])
        assert exit_.value.code == 2 and f"{path}: {next(iter(bad))}: " in capsys.readouterr().err


def test_required_options_come_from_the_file_and_the_command_line_wins(tmp_path):
    path = _file(tmp_path, {**SEGMENT_REQUIRED, "qc": True, "max-predictors": 3, "threshold": 0.25,
                            "select": {"modality": ["CT"]}}, "options.json")
    args = parse_with_config(segment.build_parser(), ["--config", path])
    assert (args.input, args.model, args.output) == (["in-a", "in-b"], "bundle", "out")
    assert args.qc is True and args.max_predictors == 3 and args.threshold == 0.25
    assert args.select == {"modality": ["CT"]}  # a mapping under 'select' (README)
    args = parse_with_config(segment.build_parser(), ["--config", path, "--output", "elsewhere", "--max-predictors",
                                                      "5", "--input", "x"])
    assert (args.output, args.max_predictors, args.input, args.qc) == ("elsewhere", 5, ["x"], True)
    single = _file(tmp_path, {**SEGMENT_REQUIRED, "input": "one", "qc": False})
    args = parse_with_config(segment.build_parser(), ["--config", single])
    assert args.input == ["one"] and args.qc is False  # one value for a list option, as on the command line


def test_a_required_option_missing_from_both_is_still_refused(tmp_path, capsys):
    path = _file(tmp_path, {"input": ["a"], "model": "m"})
    assert "--output" in _refused(capsys, segment.build_parser(), ["--config", path])


def test_an_unknown_key_and_a_file_that_is_not_a_mapping_are_usage_errors(tmp_path, capsys):
    path = _file(tmp_path, {**SEGMENT_REQUIRED, "qcc": True})
    assert f"unknown keys in {path}: ['qcc']" in _refused(capsys, segment.build_parser(), ["--config", path])
    broken = tmp_path / "broken.yaml"
    broken.write_text("- a\n- b\n")
    assert "must hold a mapping" in _refused(capsys, segment.build_parser(), ["--config", str(broken)])
    broken.write_text("a: [\n")
    assert f"{broken}: not valid YAML" in _refused(capsys, segment.build_parser(), ["--config", str(broken)])


def _one_valid_token(action: argparse.Action) -> tuple[list[str], object]:
    """A command-line spelling of one valid non-default value of `action`, and the same value as
    a config file holds it."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return [], True
    if action.choices:
        choice = list(action.choices)[-1]
        return [str(choice)], choice
    if action.type is int:
        return ["7"], 7
    if action.type is float:
        return ["0.25"], 0.25
    assert action.type is None, f"{action.dest}: a type this test does not know ({action.type})"
    if action.nargs == "+":
        return ["p", "q"], ["p", "q"]
    return ["some-value"], "some-value"


def test_the_jobs_that_take_a_config_file():
    assert {"prepare", "train", "segment", "evaluate", "demo", "send"} <= set(JOBS_WITH_CONFIG)
    assert "status" not in JOBS_WITH_CONFIG  # jobs/status.py says why


def test_send_reads_its_pacs_settings_from_the_file_and_refuses_what_the_command_line_would(tmp_path, capsys):
    from jobs import send

    path = _file(tmp_path, {"to": "dicomweb+https://pacs.example/dicom-web", "dicomweb-concurrency": 2,
                            "insecure_http": True})
    args = parse_with_config(send.build_parser(), ["out", "--config", path])
    assert (args.output, args.to, args.dicomweb_concurrency, args.insecure_http) == \
        ("out", "dicomweb+https://pacs.example/dicom-web", 2, True)
    args = parse_with_config(send.build_parser(), ["out", "--config", path, "--to", "dicomweb+https://b/dicom-web"])
    assert args.to == "dicomweb+https://b/dicom-web"  # the command line wins
    for bad, problem in (({"dicomweb_concurrency": "four"}, "--dicomweb-concurrency: invalid int value: 'four'"),
                         ({"insecure_http": "yes"}, "--insecure-http is an on/off option"),
                         ({"send": "dicomweb+https://p/dicom-web"}, "unknown keys")):  # segment's name for --to
        bad_path = _file(tmp_path, {"to": "dicomweb+https://p/dicom-web", **bad}, "bad.yaml")
        with pytest.raises(SystemExit) as exit_:  # before the output is read or the server asked
            send.main(["out", "--config", bad_path])
        assert exit_.value.code == 2 and problem in capsys.readouterr().err


@pytest.mark.parametrize("job", sorted(JOBS_WITH_CONFIG))
def test_every_option_of_every_job_reads_from_the_file_as_from_the_command_line(tmp_path, job):
    """For each job that takes --config: every option set in a file gives the namespace that the
    same values on the command line give (and a wrong type for each typed option is refused)."""
    parser = JOBS_WITH_CONFIG[job].build_parser()
    assert any(a.dest == "config" for a in parser._actions), f"unet {job} has no --config"
    argv: list[str] = []
    values: dict[str, object] = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        tokens, value = _one_valid_token(action)
        argv += [max(action.option_strings, key=len), *tokens] if action.option_strings else tokens
        values[action.dest] = value  # a positional (send's OUTPUT) may come from the file too
    from_cli = JOBS_WITH_CONFIG[job].build_parser().parse_args(argv)
    from_file = parse_with_config(JOBS_WITH_CONFIG[job].build_parser(), ["--config", _file(tmp_path, values)])
    assert vars(from_file) | {"config": None} == vars(from_cli) | {"config": None}
    for action in parser._actions:
        if action.type in (int, float) or action.choices:
            bad = "not-a-value" if action.choices else "twelve"
            with pytest.raises(SystemExit):
                parse_with_config(JOBS_WITH_CONFIG[job].build_parser(),
                                  ["--config", _file(tmp_path, {**values, action.dest: bad}, "bad.yaml")])

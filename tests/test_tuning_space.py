"""The search-space file of `unet tune` and the registry URI parser: every refusal names the entry."""
from __future__ import annotations

import pytest

from jobs.train import build_parser
from unet_core.errors import ConfigError
from unet_core.registry import ModelRef, parse_model_uri
from unet_core.tuning import Dimension, Kind, option_specs, parse_space, trial_flags

OPTIONS = option_specs(build_parser())


def test_a_space_of_every_kind_parses_against_unet_train_options():
    dims = parse_space({
        "learning-rate": {"loguniform": [1e-4, 1e-2]},
        "base_filters": {"choice": [8, 16]},
        "loss": {"choice": ["bce_dice", "dice"]},
        "dropout": {"uniform": [0.0, 0.5]},
        "depth": {"randint": [2, 4]},
        "batch-norm": {"choice": [True, False]},
    }, OPTIONS)
    assert dims == [
        Dimension("learning_rate", Kind.LOGUNIFORM, (1e-4, 1e-2)),
        Dimension("base_filters", Kind.CHOICE, (8, 16)),
        Dimension("loss", Kind.CHOICE, ("bce_dice", "dice")),
        Dimension("dropout", Kind.UNIFORM, (0.0, 0.5)),
        Dimension("depth", Kind.RANDINT, (2, 4)),
        Dimension("batch_norm", Kind.CHOICE, (True, False)),
    ]
    flags = trial_flags(dims, {"learning_rate": 0.001, "base_filters": 8, "loss": "dice", "dropout": 0.25,
                               "depth": 3, "batch_norm": False})
    assert flags == ["--learning-rate", "0.001", "--base-filters", "8", "--loss", "dice", "--dropout", "0.25",
                     "--depth", "3"]
    args = build_parser().parse_args(["--data", "d", "--output", "o", *flags])
    assert (args.learning_rate, args.base_filters, args.loss, args.depth, args.batch_norm) == (0.001, 8, "dice", 3, False)


@pytest.mark.parametrize("space, words", [
    ({"learning-rat": {"uniform": [0.1, 0.2]}}, "'learning-rat' is not a `unet train` option"),
    ({"data": {"choice": ["a", "b"]}}, "cannot be searched"),
    ({"workers": {"randint": [1, 4]}}, "cannot be searched"),
    ({"learning-rate": {"uniform": [0.2, 0.1]}}, "the range [0.2, 0.1] is empty"),
    ({"learning-rate": {"loguniform": [0.0, 0.1]}}, "positive low bound"),
    ({"learning-rate": {"normal": [0.0, 0.1]}}, "unknown distribution 'normal'"),
    ({"learning-rate": {"uniform": [0.1]}}, "takes [low, high]"),
    ({"learning-rate": {"uniform": [0.1, 0.2], "choice": [1]}}, "expected one of"),
    ({"depth": {"uniform": [2, 4]}}, "is for real-valued options"),
    ({"depth": {"randint": [2.5, 4]}}, "whole numbers"),
    ({"dropout": {"randint": [0, 1]}}, "is for whole-number options"),
    ({"loss": {"choice": ["bce", "hinge"]}}, "'hinge' is not one of"),
    ({"base-filters": {"choice": [8, "16"]}}, "'16' is not of type int"),
    ({"base-filters": {"choice": []}}, "non-empty list"),
    ({"base-filters": {"choice": [8, 8]}}, "lists a value twice"),
    ([], "expected a mapping"),
])
def test_bad_spaces_are_refused_naming_the_entry(space, words):
    with pytest.raises(ConfigError) as err:
        parse_space(space, OPTIONS, where="space.yaml")
    assert words in str(err.value)
    assert str(err.value).startswith("space.yaml")


@pytest.mark.parametrize("uri, ref", [
    ("models:/liver/3", ModelRef("liver", version="3")),
    ("models:/liver/03", ModelRef("liver", version="3")),
    ("models:/ct liver.v2@champion", ModelRef("ct liver.v2", alias="champion")),
    ("models:/a/b/4", None),
])
def test_registry_uris(uri, ref):
    if ref is None:
        with pytest.raises(ConfigError, match="models:/NAME/VERSION"):
            parse_model_uri(uri)
    else:
        assert parse_model_uri(uri) == ref
        assert parse_model_uri(ref.uri) == ref


@pytest.mark.parametrize("uri", ["models:/liver", "models:/liver/0", "models:/liver/latest", "models:/@x",
                                 "models:/liver@", "models:/liver@a/b"])
def test_registry_uris_without_a_version_or_alias_are_refused(uri):
    with pytest.raises(ConfigError, match="models:/NAME/VERSION"):
        parse_model_uri(uri)


def test_paths_and_s3_are_not_registry_uris():
    assert parse_model_uri("s3://bucket/bundle") is None
    assert parse_model_uri("/models/liver/3") is None

"""`unet bench quality`'s selection flags, without training: which recipes, which seeds, which network."""
from __future__ import annotations

import pytest

from jobs.bench import build_parser
from jobs.bench.quality import DEFAULT_SEEDS, NETWORK, _recipes, _seeds, network_flags
from unet_core.errors import ConfigError


def _args(*argv: str):
    return build_parser().parse_args(["quality", *argv])


def test_defaults_run_both_recipes_with_their_seeds_and_the_bench_network():
    args = _args()
    assert _recipes(args) == ["seed", "native"]
    assert {r: _seeds(args, r) for r in ("seed", "native")} == {r: list(range(n)) for r, n in DEFAULT_SEEDS.items()}
    assert network_flags(args.quality_norm, args.quality_head_conv_filters) == NETWORK


def test_one_recipe_chosen_seeds_and_a_norm():
    args = _args("--quality-recipes", "native", "--quality-seed-list", "2,0", "--quality-norm", "batch")
    assert NETWORK[:2] == ("--norm", "batch")
    assert _recipes(args) == ["native"] and _seeds(args, "native") == [2, 0]
    assert network_flags(args.quality_norm) == ("--norm", "batch", *NETWORK[2:])
    assert network_flags("instance", 2) == ("--norm", "instance", "--head-conv-filters", "2")
    assert _seeds(_args("--quality-seeds", "2"), "native") == [0, 1]


@pytest.mark.parametrize("argv, match", [(("--quality-recipes", "nnunet"), "give some of seed, native"),
                                         (("--quality-seed-list", "one"), "give integers")])
def test_a_bad_selection_is_named(argv, match):
    args = _args(*argv)
    with pytest.raises(ConfigError, match=match):
        _recipes(args) if "--quality-recipes" in argv else _seeds(args, "native")

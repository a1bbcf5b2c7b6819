"""Command-line options are generated from the config fields: each option's default in --help is the
field's own, only what the user typed reaches the config, and the flags are the ones parsed."""
import argparse
import dataclasses

import pytest

from graphmorph.cli import main
from graphmorph.search.autogrow import AutoGrowConfig
from graphmorph.search.nac import NACConfig
from graphmorph.search.options import add_options, flag_of, given_options


@pytest.mark.parametrize("config_type", [AutoGrowConfig, NACConfig])
def test_every_option_field_is_an_option_whose_help_gives_the_fields_default(config_type):
    parser = argparse.ArgumentParser()
    add_options(parser, config_type)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(config_type):
        if "option" not in f.metadata:
            assert f.name not in actions
            continue
        action = actions[f.name]
        assert flag_of(f) in action.option_strings and action.default is None
        written = f.metadata["option"]["default_text"]
        if written is None and f.default not in (None, True, False, ()):
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
            assert action.help.endswith(f"(default {shown})"), (f.name, action.help)


def test_only_the_options_typed_reach_the_config_and_values_are_parsed():
    parser = argparse.ArgumentParser()
    add_options(parser, NACConfig)
    args = parser.parse_args(["--retrain", "--baseline", "random", "--baseline", "worst", "--max-cells", "3,4,5",
                              "--n", "2"])
    assert given_options(args, NACConfig) == {"keep_weights": False, "baselines": ["random", "worst"],
                                              "max_cells": (3, 4, 5), "n_random": 2}
    config = NACConfig.from_dict(given_options(args, NACConfig))
    assert config.baselines == ("random", "worst") and config.lr == NACConfig().lr


def test_a_resumed_run_refuses_settings_by_the_flags_that_set_them(capsys, tmp_path):
    assert main(["nac", "--resume", str(tmp_path), "--retrain", "--n", "3"]) == 2
    assert "drop --retrain, --n" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # --seed-net and --model are mutually exclusive
        main(["autogrow", "--seed-net", "Plain3Net", "--model", "a.b:c"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err

"""`camlens train`'s flags come from TrainConfig: one flag per field with the field's default (written only in the
dataclass), the flag names of before, and a command line that builds the config the hand-written parser built."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from camlens.cli import build_parser
from camlens.cli.train import config_flag, config_from_args
from camlens.training import TrainConfig
from camlens.training.config import FLAGS

# every flag of `camlens train` before its flags were generated from TrainConfig
FLAGS_BEFORE = (
    "--data --images --arch-option --arch --weights --epochs --batch-size --lr --optimizer --protocol --weight-decay "
    "--momentum --lr-decay-every --new-layer-lr-mult --augment --resize-size --size --select-by --val-data "
    "--val-images --mask-root --channels-last --no-channels-last --amp --num-train --num-val --val-fraction --seed "
    "--device --workers --download --resume --overwrite --dist-timeout --out --quiet --linear-probe --probe-c "
    "--probe-raw --wsol-method --wsol-param --trials --lr-range --test-data --test-split --num-test"
).split()


def _train_parser() -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["train"]


def _actions() -> dict[str, argparse.Action]:
    return {flag: action for action in _train_parser()._actions for flag in action.option_strings}


def test_every_config_field_has_a_flag_whose_default_is_the_fields():
    actions = _actions()
    assert set(FLAGS) == {f.name for f in fields(TrainConfig)}, "FLAGS and TrainConfig name the same fields"
    for f in fields(TrainConfig):
        action = actions[config_flag(f.name)]
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert action.dest == f.name
        assert action.default == default and type(action.default) is type(default), f.name
        assert action.help and FLAGS[f.name].help in action.help, f"{f.name}: its flag has the help of FLAGS"


def test_the_flags_of_before_are_all_there_with_help():
    actions = _actions()
    assert set(FLAGS_BEFORE) <= set(actions), sorted(set(FLAGS_BEFORE) - set(actions))
    assert all(actions[flag].help for flag in actions if flag != "-h")
    text = _train_parser().format_help()
    assert "--size SIZE" in text and "(default: 10)" in text and "(default: camlens-train)" in text


def test_no_flags_build_the_default_config():
    assert config_from_args(build_parser().parse_args(["train"])) == TrainConfig()


def test_a_command_line_builds_the_config_the_hand_written_parser_built():
    argv = (
        "train --data builtin --arch gapnet --arch-option width=8 --arch-option large_feature_map=true "
        "--arch-option name=x --weights DEFAULT --epochs 3 --batch-size 16 --protocol wsolevaluation --lr 0.02 "
        "--momentum 0.8 --lr-decay-every 2 --new-layer-lr-mult 5 --augment crop --size 32 --resize-size 40 "
        "--num-train 20 --num-val 8 --val-fraction 0.2 --select-by maxboxacc --seed 3 --no-channels-last --amp "
        "--workers 1 --download --resume --out runs/a --quiet"
    ).split()
    # TrainConfig(...) as cmd_train wrote it out by hand: sgd from the protocol, builder options read as JSON
    before = TrainConfig(
        "builtin",
        arch="gapnet",
        arch_options={"width": 8, "large_feature_map": True, "name": "x"},
        weights="DEFAULT",
        out="runs/a",
        epochs=3,
        batch_size=16,
        lr=0.02,
        optimizer="sgd",
        momentum=0.8,
        lr_decay_every=2,
        new_layer_lr_mult=5.0,
        augment="crop",
        image_size=32,
        resize_size=40,
        num_train=20,
        num_val=8,
        val_fraction=0.2,
        select_by="maxboxacc",
        seed=3,
        channels_last=False,
        amp=True,
        workers=1,
        download=True,
        resume=True,
        progress=False,
        protocol="wsolevaluation",
    )
    assert config_from_args(build_parser().parse_args(argv)) == before
    plain = config_from_args(build_parser().parse_args(["train", "--channels-last", "--overwrite"]))
    assert plain == TrainConfig(weights="none", optimizer="adamw", channels_last=True, overwrite=True)


def test_a_bad_arch_option_is_a_usage_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["train", "--arch-option", "width"])
    assert stop.value.code == 2
    assert "--arch-option 'width': expected KEY=VALUE" in capsys.readouterr().err

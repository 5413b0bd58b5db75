"""Options declared once on a config dataclass: its YAML key, its flag and its help (pcdms_aug.config.options)."""
import argparse
import dataclasses

import pytest

from pcdms_aug.config.loading import build, load_config
from pcdms_aug.config.options import add_options, given_options, later, option
from pcdms_aug.utils.argtypes import int_in


@dataclasses.dataclass
class _Inner:
    depth: int = option(3, type=int_in(1, 10), help="how deep")
    low: float | None = option(type=float, group="rule", help="at least this")
    high: float | None = option(type=float, group="rule", metavar="X", help="at most this")
    quiet_key: int = 7  # a YAML key only


@dataclasses.dataclass
class _Outer:
    name: str | None = option(help="what to call it")
    kind: str = option("a", choices=later(lambda: ("a", "b")), flag="--sort")
    force: bool = option(False, action="store_true", help="replace what is there")
    inner: _Inner = option(default_factory=_Inner)


def _parser():
    parser = argparse.ArgumentParser(prog="t")
    add_options(parser, _Outer)
    return parser


def test_one_flag_per_option_field_with_its_help_and_prefix():
    helps = {a.option_strings[0]: (a.dest, a.help) for a in _parser()._actions if a.option_strings[0] != "-h"}
    assert helps == {"--name": ("name", "what to call it"), "--sort": ("kind", None),
                     "--force": ("force", "replace what is there"), "--inner-depth": ("inner_depth", "how deep"),
                     "--inner-low": ("inner_low", "at least this"), "--inner-high": ("inner_high", "at most this")}
    assert "--inner-quiet-key" not in _parser().format_help()


def test_given_flags_come_back_as_key_paths_and_absent_ones_not_at_all():
    args = _parser().parse_args(["--sort", "b", "--inner-depth", "5", "--inner-high", "0.5", "--force"])
    assert given_options(args, _Outer) == [(("kind",), "b"), (("force",), True), (("inner", "depth"), 5),
                                           (("inner", "high"), 0.5)]
    assert given_options(_parser().parse_args([]), _Outer) == []
    # the field's default is the dataclass's, so YAML and flags share it
    assert build(_Outer, {}).inner.depth == 3 and build(_Outer, {}).kind == "a"


def test_types_choices_and_groups_are_enforced_by_argparse(capsys):
    for bad in (["--inner-depth", "0"], ["--sort", "c"], ["--inner-low", "1", "--inner-high", "2"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)
    assert "not allowed with argument" in capsys.readouterr().err


def test_generate_flags_replace_yaml_keys_and_the_rest_are_the_dataclass_defaults(tmp_path):
    from pcdms_aug.cli import main as cli
    from pcdms_aug.generation.command import config_from_args
    from pcdms_aug.generation.config import GenerateConfig

    parser = cli._command_parser("generate", argparse.ArgumentParser(prog="pcdms-aug").add_subparsers())
    args = parser.parse_args(["--config", "tiny/generate.yaml", "--views", "3", "--format", "png",
                              "--filter-threshold", "0.2", "--filter-model", "m.pth", "--stages", "prior,inpaint"])
    cfg = config_from_args(args)
    yaml_keys = load_config("tiny/generate.yaml")
    assert (cfg.views, cfg.image_format, cfg.stages) == (3, "png", ("prior", "inpaint"))
    # a rule given as a flag replaces the YAML's rule (top: 0.75), the YAML's other filter keys stay
    assert (cfg.filter.threshold, cfg.filter.top, cfg.filter.size) == (0.2, None, tuple(yaml_keys["filter"]["size"]))
    assert cfg.weights == yaml_keys["weights"] == "tiny"
    defaults = GenerateConfig()
    assert (cfg.batch, cfg.policy, cfg.jpeg_quality, cfg.filter.arch) == (defaults.batch, defaults.policy,
                                                                          defaults.jpeg_quality, defaults.filter.arch)

"""Config loading: documented defaults, YAML typing, overrides, and what a refused config's message names.

Error tests check behaviour, not wording: a `ConfigError` (exit code 2), one paragraph, the key path, the value
given and a key phrase of what is allowed (a bound, the choices, a did-you-mean).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from vaegen.config import Config, Section, config_from_dict, load_config
from vaegen.errors import ConfigError, VaegenError
from vaegen.models import resolved_and_checked


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, overrides: list[str] = ()) -> Config:
    return load_config(write(tmp_path, text), list(overrides))


def refused(call, *args, **kwargs) -> str:
    """The message of the ConfigError `call` raises: exit code 2, and one paragraph."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message, message
    return message


def error(tmp_path: Path, text: str, overrides: list[str] = ()) -> str:
    return refused(load, tmp_path, text, overrides)


def says(message: str, *phrases: str) -> None:
    missing = [phrase for phrase in phrases if phrase not in message]
    assert not missing, f"{message!r} does not say {missing}"


REPO = Path(__file__).resolve().parents[1]
MINIMAL = "data:\n  root: some/images\n"


# --- defaults and typing ------------------------------------------------------------------


def test_minimal_yaml_gives_documented_defaults(tmp_path):
    cfg = load(tmp_path, MINIMAL)
    assert cfg.data.root == Path("some/images")
    assert cfg.data.image_size == (64, 64)
    assert cfg.data.channels == 3
    assert cfg.data.resize == "center_crop"
    assert cfg.data.val_fraction == 0.1
    assert cfg.data.hflip is False
    assert cfg.data.skip_bad is False
    assert cfg.data.cache_dir is None
    assert cfg.model.name == "conv_vae"
    assert cfg.model.latent_dim == 128
    assert cfg.model.widths == (64, 128, 256, 512)
    assert cfg.model.conditional == "none"
    assert cfg.loss.recon == "mse"
    assert cfg.beta.schedule == "constant"
    assert cfg.beta.max == 1.0
    assert cfg.beta.warmup == 10
    assert cfg.beta.cycle == 20
    assert cfg.optim.name == "adam"
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.optim.betas == (0.9, 0.999)
    assert cfg.optim.weight_decay == 0.0
    assert cfg.optim.grad_clip is None
    assert cfg.train.epochs == 100
    assert cfg.train.batch_size == 64
    assert cfg.train.seed == 0
    assert cfg.train.device == "auto"
    assert cfg.eval.every == 5
    assert cfg.eval.num_grid == 64
    assert cfg.eval.backbone == "auto"
    assert cfg.eval.inception_weights is None
    assert cfg.eval.num_samples == 5000
    assert cfg.eval.reference == "train"
    assert cfg.eval.batch_size == "auto"
    assert cfg.eval.kid_subset_size == 1000
    assert cfg.eval.temperature == 1.0
    assert cfg.logging.wandb == "disabled"
    assert cfg.output.run_name is None
    assert cfg.output.logs_dir == Path("logs")
    assert cfg.output.best_dir == Path("best_models")
    assert cfg.output.select == "fid"


def test_int_image_size_becomes_square(tmp_path):
    cfg = load(tmp_path, "data:\n  root: x\n  image_size: 96\n")
    assert cfg.data.image_size == (96, 96)


def test_list_image_size_is_height_width(tmp_path):
    cfg = load(tmp_path, "data:\n  root: x\n  image_size: [64, 48]\n")
    assert cfg.data.image_size == (64, 48)


def test_exponent_without_dot_is_accepted_as_float(tmp_path):
    # PyYAML reads `2e-4` (no dot) as the string "2e-4"; it must still be a valid lr.
    cfg = load(tmp_path, "data:\n  root: x\noptim:\n  lr: 2e-4\n")
    assert isinstance(cfg.optim.lr, float)
    assert cfg.optim.lr == pytest.approx(0.0002)
    cfg = load(tmp_path, MINIMAL, ["optim.lr=2e-4"])
    assert cfg.optim.lr == pytest.approx(0.0002)


# --- unknown keys -------------------------------------------------------------------------


def test_misspelt_key_names_path_and_suggests_closest(tmp_path):
    message = error(tmp_path, MINIMAL + "model:\n  latnt_dim: 64\n")
    assert "unknown key `model.latnt_dim`" in message
    assert "did you mean `latent_dim`?" in message


def test_misspelt_section_suggests_section(tmp_path):
    message = error(tmp_path, MINIMAL + "trian:\n  epochs: 3\n")
    assert "unknown key `trian`" in message
    assert "did you mean `train`?" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = error(tmp_path, MINIMAL + "model:\n  zzz: 1\n")
    says(message, "unknown key `model.zzz`", "valid keys in `model`", "name", "latent_dim", "widths", "conditional")
    assert "did you mean" not in message


# --- wrong types and ranges ---------------------------------------------------------------


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    message = error(tmp_path, MINIMAL + "optim:\n  lr: abc\n")
    says(message, "`optim.lr` = 'abc'", "a number")


def test_out_of_range_names_key_and_bound(tmp_path):
    message = error(tmp_path, MINIMAL + "train:\n  epochs: 0\n")
    says(message, "`train.epochs` = 0", "greater than or equal to 1")


def test_bad_choice_names_allowed_values(tmp_path):
    message = error(tmp_path, MINIMAL + "loss:\n  recon: l1\n")
    says(message, "`loss.recon` = 'l1'", "'mse', 'bce' or 'gaussian'")


def size_error(tmp_path: Path, text: str) -> str:
    """The image size a model halves is its family's rule: checked as training (and `vaegen config`) checks it."""
    return refused(lambda: resolved_and_checked(load(tmp_path, text)))


def test_image_size_not_divisible_suggests_neighbours(tmp_path):
    message = size_error(tmp_path, "data:\n  root: x\n  image_size: 100\n")
    assert "not divisible by 16" in message and "model.widths" in message
    assert "96 or 112" in message


def test_image_size_divisor_follows_number_of_widths(tmp_path):
    message = size_error(tmp_path, "data:\n  root: x\n  image_size: 30\nmodel:\n  widths: [32, 64]\n")
    assert "not divisible by 4" in message
    assert "28 or 32" in message
    # and a size divisible by 4 (but not by 16) is then fine
    config, _ = resolved_and_checked(load(tmp_path, "data:\n  root: x\n  image_size: 28\nmodel:\n  widths: [32, 64]\n"))
    assert config.data.image_size == (28, 28)


def test_image_size_width_axis_is_checked_too(tmp_path):
    message = size_error(tmp_path, "data:\n  root: x\n  image_size: [64, 50]\n")
    assert "width 50 is not divisible by 16" in message
    assert "48 or 64" in message


@pytest.mark.parametrize("model, size, divisor, named", [
    ("{name: ddpm, widths: [32, 64, 64]}", 20, None, None),  # the U-Net halves between its levels: 2 times, not 3
    ("{name: ddpm, widths: [32, 64, 64]}", 18, 4, "model.widths"),
    ("{name: conv_vae, widths: [32, 64, 64]}", 20, 8, "model.widths"),
    ("{name: realnvp, flow_scales: 3}", 12, None, None),  # a flow squeezes flow_scales - 1 times; model.widths is unused
    ("{name: realnvp, flow_scales: 4}", 12, 8, "model.flow_scales"),
])
def test_the_image_size_rule_is_the_models_own(tmp_path, model, size, divisor, named):
    text = f"data:\n  root: x\n  image_size: {size}\nmodel: {model}\nsampler:\n  name: prior\noutput:\n  select: fid\n"
    if divisor is None:
        assert resolved_and_checked(load(tmp_path, text))[0].data.image_size == (size, size)
    else:
        says(size_error(tmp_path, text), f"not divisible by {divisor}", named)


def test_missing_root(tmp_path):
    message = error(tmp_path, "data:\n  image_size: 64\n")
    assert "missing required key `data.root`" in message


def test_an_empty_root_says_it_is_empty_not_that_none_is_no_path(tmp_path):
    message = error(tmp_path, MINIMAL, ["data.root="])
    says(message, "`data.root` is empty", "ImageFolder")  # the field's description says what to give
    assert "None" not in message and "default" not in message  # required: there is no default to fall back on


def test_an_empty_value_with_a_default_offers_the_default(tmp_path):
    message = error(tmp_path, MINIMAL + "train:\n  epochs:\n")
    says(message, "`train.epochs` is empty", "leave it out for the default, 100")


@pytest.mark.parametrize(("override", "optional"), [
    ("data.root=''", False),
    ("data.cache_dir=''", True),
    ("output.best_dir=' '", True),
])
def test_an_empty_string_is_not_read_as_the_current_folder(tmp_path, override, optional):
    key, value = override.split("=")
    message = error(tmp_path, MINIMAL, [override])
    says(message, f"`{key}` = {value[1:-1]!r}", "an empty string is no path")
    assert ("leave it out for the default" in message) == optional


def test_unknown_model_name_lists_registered_models(tmp_path):
    message = error(tmp_path, MINIMAL + "model:\n  name: transformer\n")
    says(message, "`model.name` = 'transformer'", "registered models", "conv_vae", "res_vae")


def test_cyclic_warmup_longer_than_cycle_rejected(tmp_path):
    message = error(tmp_path, MINIMAL + "beta:\n  schedule: cyclic\n  warmup: 30\n  cycle: 20\n")
    says(message, "`beta`", "beta.warmup (30)", "at most beta.cycle (20)")
    assert "'schedule'" not in message  # the section's own check speaks for itself, without its dict echoed
    # the same numbers are fine for a non-cyclic schedule
    cfg = load(tmp_path, MINIMAL + "beta:\n  schedule: warmup\n  warmup: 30\n  cycle: 20\n")
    assert cfg.beta.warmup == 30


@pytest.mark.parametrize("select", ["val_loss", "val_nelbo", "val_recon"])
def test_validation_selection_without_validation_split_rejected(tmp_path, select):
    message = error(tmp_path, f"data:\n  root: x\n  val_fraction: 0\noutput:\n  select: {select}\n")
    assert f"output.select is {select}" in message
    assert "data.val_fraction is 0" in message


def test_fid_selection_needs_no_validation_split(tmp_path):
    cfg = load(tmp_path, "data:\n  root: x\n  val_fraction: 0\noutput:\n  select: fid\n")
    assert cfg.output.select == "fid"
    assert cfg.data.val_fraction == 0


def test_fid_selection_without_backbone_rejected(tmp_path):
    message = error(tmp_path, MINIMAL + "eval:\n  backbone: none\n")
    assert "output.select is fid but eval.backbone is none" in message
    cfg = load(tmp_path, MINIMAL + "eval:\n  backbone: none\noutput:\n  select: val_nelbo\n")
    assert cfg.eval.backbone == "none"


def test_val_reference_without_validation_split_rejected(tmp_path):
    message = error(tmp_path, "data:\n  root: x\n  val_fraction: 0\neval:\n  reference: val\n")
    assert "eval.reference is val but data.val_fraction is 0" in message


def test_unknown_backbone_names_allowed_ones(tmp_path):
    message = error(tmp_path, MINIMAL + "eval:\n  backbone: resnet\n")
    says(message, "`eval.backbone` = 'resnet'", "'efficientnet-lite0'")


# --- files --------------------------------------------------------------------------------


def test_yaml_syntax_error_names_line(tmp_path):
    message = error(tmp_path, "data:\n  root: x\n   bad: 3\n")
    assert "is not valid YAML" in message
    assert "line 3" in message


def test_top_level_list_rejected(tmp_path):
    message = error(tmp_path, "- data\n- model\n")
    assert "must hold a mapping" in message
    assert "not a list" in message


def test_nonexistent_file_rejected(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert "does not exist" in str(info.value)
    assert str(missing) in str(info.value)


# --- overrides ----------------------------------------------------------------------------


def test_overrides_are_yaml_typed_and_applied(tmp_path):
    cfg = load(
        tmp_path,
        MINIMAL + "train:\n  epochs: 50\n",
        ["train.epochs=5", "model.latent_dim=64", "optim.lr=1e-3", "data.image_size=[32, 32]"],
    )
    assert cfg.train.epochs == 5
    assert cfg.model.latent_dim == 64
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.image_size == (32, 32)
    # untouched keys in the overridden sections keep their values
    assert cfg.data.root == Path("some/images")
    assert cfg.model.widths == (64, 128, 256, 512)


def test_later_override_wins(tmp_path):
    cfg = load(tmp_path, MINIMAL, ["train.epochs=5", "train.epochs=7"])
    assert cfg.train.epochs == 7


def test_override_of_unknown_key_suggests_closest(tmp_path):
    message = error(tmp_path, MINIMAL, ["model.latnt_dim=3"])
    assert "unknown key `model.latnt_dim`" in message
    assert "did you mean `latent_dim`?" in message


def test_override_without_equals_rejected(tmp_path):
    message = error(tmp_path, MINIMAL, ["train.epochs5"])
    assert "not of the form key.path=value" in message


def test_override_below_a_scalar_rejected(tmp_path):
    message = error(tmp_path, MINIMAL + "train:\n  epochs: 3\n", ["train.epochs.x=1"])
    assert "`train.epochs` is a value, not a section" in message
    # without the key in the file it is still an error, not a silently accepted value
    with pytest.raises(ConfigError):
        load(tmp_path, MINIMAL, ["train.epochs.x=1"])


def test_override_can_build_config_from_base(tmp_path):
    cfg = load_config(None, ["data.root=imgs", "train.epochs=2"])
    assert cfg.data.root == Path("imgs")
    assert cfg.train.epochs == 2


# --- round trip and error type ------------------------------------------------------------


def test_to_yaml_round_trips(tmp_path):
    text = (
        "data:\n  root: some/images\n  image_size: [64, 48]\n  channels: 1\n  cache_dir: /tmp/cache\n"
        "model:\n  latent_dim: 32\n  widths: [16, 32, 64, 128]\n  conditional: onehot\n"
        "beta:\n  schedule: cyclic\n  max: 4.0\n  warmup: 5\n  cycle: 10\n"
        "optim:\n  name: adamw\n  lr: 2e-4\n  grad_clip: 1.5\n"
        "train:\n  epochs: 3\n  device: cpu\n"
        "eval:\n  backbone: inception\n  inception_weights: /tmp/w.pth\n  num_samples: 64\n  temperature: 0.8\n"
        "output:\n  run_name: my-run\n  select: val_nelbo\n"
    )
    cfg = load(tmp_path, text)
    dumped = cfg.to_yaml()
    again = load_config(write(tmp_path, dumped, "dumped.yaml"))
    assert again == cfg
    assert again.to_yaml() == dumped
    # and the defaults survive the round trip as well
    default = load(tmp_path, MINIMAL)
    assert load_config(write(tmp_path, default.to_yaml(), "default.yaml")) == default


def test_config_error_exit_code():
    assert ConfigError.exit_code == 2
    assert issubclass(ConfigError, VaegenError)
    assert ConfigError("x").exit_code == 2


def test_empty_section_means_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: x\nmodel:\ntrain:\n")
    cfg = load_config(path, ["model.latent_dim=3"])
    assert cfg.model.latent_dim == 3 and cfg.train.epochs == 100


# --- values pydantic would coerce, files that are not configs, and messages that must stay one paragraph --------


@pytest.mark.parametrize(("override", "phrases"), [
    ("train.epochs=true", ("`train.epochs` is true", "a yes/no value", "a number")),  # once read as 1
    ("data.channels=true", ("`data.channels` is true", "a yes/no value", "1 or 3")),
    ("optim.lr=.inf", ("`optim.lr` = inf", "finite number")),  # once trained into NaN
    ("eval.temperature=.nan", ("`eval.temperature` = nan", "finite number")),
    ("optim.betas=[1.5, -1]", ("`optim.betas` = [1.5, -1]", "each in [0, 1)")),  # once torch's ValueError after setup
    ("optim.betas=[0.9]", ("`optim.betas`", "too few values", "item 2")),  # once "missing required key"
])
def test_values_that_would_be_coerced_or_fail_later_are_refused_up_front(tmp_path, override, phrases):
    says(error(tmp_path, MINIMAL, [override]), "with its --set values has 1 problem", *phrases)


def test_yes_no_settings_still_take_yes_or_no(tmp_path):
    cfg = load(tmp_path, MINIMAL, ["train.compile=true", "data.hflip=true", "train.channels_last=false"])
    assert cfg.train.compile is True and cfg.data.hflip is True and cfg.train.channels_last is False


def test_a_config_that_is_not_utf8_text_or_is_a_folder_is_named(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    says(refused(load_config, binary), "binary.yaml", "not UTF-8 text")
    says(refused(load_config, tmp_path), str(tmp_path), "is a folder, not a YAML file")


def test_a_broken_override_value_is_reported_on_one_line(tmp_path):
    message = error(tmp_path, MINIMAL, ["train.epochs=[1"])
    assert "is not valid YAML" in message and "\n" not in message and "quote the whole --set argument" in message
    assert "not of the form key.path=value" in error(tmp_path, MINIMAL, [".train=5"])  # once "unknown key ``"


@pytest.mark.parametrize(("name", "command"), [("test_apples.yaml", "vaegen test"), ("tune_quick.yaml", "vaegen tune")])
def test_another_commands_config_is_named_as_such_in_one_line(name, command):
    message = refused(load_config, REPO / "configs" / name)
    says(message, name, f"a `{command}` config")
    assert "unknown key" not in message


def test_a_test_given_a_training_config_says_so(tmp_path):
    from vaegen.config import load_test_config

    message = refused(load_test_config, REPO / "configs" / "train_apples.yaml", ["checkpoint=best_models/x"])
    says(message, "train_apples.yaml", "a `vaegen train` config")


def test_each_yes_no_value_is_named_by_its_own_key_with_what_it_takes(tmp_path):
    message = error(tmp_path, MINIMAL, ["model.conditional=yes", "model.latent_dim=yes", "model.widths=[8, no]"])
    assert "has 3 problems" in message  # once 1: the section's first yes/no value hid the others
    says(message, "`model.conditional` is true", "'none', 'onehot' or 'embedding' is expected")
    says(message, "`model.latent_dim` is true", "a yes/no value")
    says(message, "`model.widths` item 2 is false")  # once read as width 0


def test_a_setting_of_two_kinds_is_one_problem_in_its_own_words(tmp_path):
    message = error(tmp_path, MINIMAL, ["eval.batch_size=abc", "data.on_device=maybe", "train.batch_size=64"])
    assert "has 2 problems" in message and "literal[" not in message and "constrained-int" not in message
    says(message, "`eval.batch_size` = 'abc'", "a number or 'auto'")
    says(message, "`data.on_device` = 'maybe'", "'auto', true or false")
    says(error(tmp_path, MINIMAL, ["eval.batch_size=0"]), "`eval.batch_size` = 0", "greater than 0")  # the bound


@pytest.mark.parametrize(("text", "what"), [("", "is empty"), ("# a config\n\n  # to fill in\n", "holds only comments"), ("{}\n", "holds no settings")])
def test_an_empty_config_file_says_so_and_what_it_needs_at_least(tmp_path, text, what):
    message = error(tmp_path, text)
    says(message, f"{tmp_path / 'run.yaml'} {what}", "data: {root: path/to/images}", "configs/quickstart.yaml")
    assert "missing required key" not in message  # once "has 1 problem: missing required key `data`"
    assert load(tmp_path, text, ["data.root=x"]).data.root == Path("x")


def test_a_section_given_a_single_value_is_shown_written_as_a_section(tmp_path):
    message = error(tmp_path, "data: data/apples_sample\nsampler: gmm\nmodel: 5\n")
    assert "DataConfig" not in message and "dictionary" not in message  # once pydantic's class name
    says(message, "has 3 problems", "`data` is a section of keys", "(data/apples_sample)", "`data: {root: data/apples_sample}`")
    says(message, "`sampler` is a section of keys (name, components, covariance)", "(gmm)")
    says(message, "`model` is a section of keys (name, latent_dim, widths, conditional, ", "(5)")  # then each family's own


def test_keys_under_a_single_value_are_named(tmp_path):
    message = error(tmp_path, MINIMAL, ["train.epochs.x=1", "model.widths.deep=1"])
    says(message, "`train.epochs` is a single value with no keys under it", "{x: 1}", "the default is 100")
    says(message, "`model.widths` is a list with no keys under it", "{deep: 1}")  # once "Input should be a valid integer"


IMAGE_SIZE = ("an image size is one whole number", "[height, width]")  # how to write one


@pytest.mark.parametrize(("text", "overrides", "shown"), [
    ("  image_size: abc\n", [], "'abc'"),
    ("", ["data.image_size=abc"], "'abc'"),  # once "Input should be a valid tuple"
    ("", ["data.image_size=[64]"], "[64]"),  # once "has too few values"
    ("", ["data.image_size=-5"], "-5"),  # once "sizes must be positive"
    ("", ["data.image_size=[0, 64]"], "[0, 64]"),
    ("", ["data.image_size=[64, abc]"], "[64, abc]"),  # once "'abc' ... a valid integer"
    ("", ["data.image_size=[64, null]"], "[64, null]"),  # once "`data.image_size` is empty"
    ("", ["data.image_size=64.5"], "64.5"),
])
def test_an_image_size_that_is_no_size_says_how_to_write_one(tmp_path, text, overrides, shown):
    says(error(tmp_path, MINIMAL + text, overrides), f"1 problem: `data.image_size` = {shown} is not allowed", *IMAGE_SIZE)


def test_an_image_size_with_channels_says_where_they_go_and_other_mistakes_keep_their_words(tmp_path):
    says(error(tmp_path, MINIMAL, ["data.image_size=[64, 64, 3]"]),  # once "at most 2 items"
         "`data.image_size` = [64, 64, 3]", *IMAGE_SIZE, "the channel count goes in data.channels")
    says(error(tmp_path, MINIMAL, ["data.image_size=[64, yes]"]), "`data.image_size` item 2 is true, a yes/no value")
    says(error(tmp_path, MINIMAL, ["data.image_size="]), "`data.image_size` is empty")
    says(error(tmp_path, MINIMAL, ["data.image_size.height=64"]), "`data.image_size` is a list with no keys under it")
    assert load(tmp_path, MINIMAL, ["data.image_size=[64.0, 48]"]).data.image_size == (64, 48)  # as pydantic takes it


def test_an_unknown_model_name_lists_the_registry_and_the_close_one(tmp_path, register_for_this_test):
    from vaegen.models.vae import VAE, ConvVAE

    register_for_this_test("tiny_vae", ConvVAE, VAE())  # the list comes from the registry, not from config/
    says(error(tmp_path, MINIMAL + "model:\n  name: yes\n"),  # once "where a name is expected"
         "`model.name` is true, a yes/no value", "the name of a registered model", "tiny_vae")
    says(error(tmp_path, MINIMAL, ["model.name=conv_vea"]), "`model.name` = 'conv_vea'", "tiny_vae", "did you mean `conv_vae`?")
    message = error(tmp_path, MINIMAL, ["model.name=transformer"])
    says(message, "`model.name` = 'transformer'", "registered models", "conv_vae", "tiny_vae")
    assert "did you mean" not in message
    says(error(tmp_path, MINIMAL, ["model.name=5"]), "`model.name` = 5", "registered models", "tiny_vae")
    assert load(tmp_path, MINIMAL, ["model.name=tiny_vae"]).model.name == "tiny_vae"


class _Inner(Section):
    n: int = 3


class _Outer(Section):
    inner: _Inner = _Inner()
    extra: dict[str, int] = Field(default_factory=dict)
    items: list[int] = Field(default_factory=list)
    maybe: _Inner | None = None


class _Nested(Section):
    outer: _Outer = _Outer()


def test_an_empty_section_means_its_defaults_at_any_depth(tmp_path):
    # `train:` with nothing under it is null in YAML: a sweep's `tune: {resources: }` was once
    # "`tune.resources` is empty: ... the default, cpu=1.0 gpu=0.0", and `overrides:` an error too
    nested = config_from_dict(yaml.safe_load("outer:\n  inner:\n  extra:\n"), schema=_Nested)
    assert nested == _Nested() and nested.outer.extra == {}
    assert config_from_dict({"outer": {"maybe": None}}, schema=_Nested).outer.maybe is None  # where null is a value, it stays one
    assert load(tmp_path, MINIMAL + "model:\ntrain:\n") == load(tmp_path, MINIMAL)


def test_an_empty_list_or_list_item_reads_cleanly(tmp_path):
    message = refused(config_from_dict, {"outer": {"items": None}}, schema=_Nested)
    says(message, "`outer.items` is empty", "the default, []")  # once "... the default, PydanticUndefined."
    message = refused(config_from_dict, {"outer": {"items": [1, None]}}, schema=_Nested)
    says(message, "`outer.items` item 2 is empty")
    message = error(tmp_path, MINIMAL + "model:\n  widths: [64, null]\n")
    says(message, "`model.widths` item 2 is empty")
    assert "default" not in message  # once "`model.widths` is empty ... or leave it out"


# --- found by tests/test_fuzz.py: values valid to the schema that crashed `vaegen train` with a traceback --------


@pytest.mark.parametrize("override", ["train.seed=-1", f"train.seed={2**32}", f"train.seed={2**64}"])
def test_a_seed_that_numpy_or_scikit_learn_cannot_take_is_refused(tmp_path, override):
    # once torch's "Overflow when unpacking long long" (2**64) and scikit-learn's InvalidParameterError with
    # sampler.name: gmm (-1), both as tracebacks after setup
    says(error(tmp_path, MINIMAL, [override]), f"`train.seed` = {override.partition('=')[2]}", "1 problem", "or equal to")
    assert load(tmp_path, MINIMAL, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1


def test_a_test_seed_out_of_range_is_refused():
    from vaegen.config import load_test_config

    message = refused(load_test_config, None, [f"seed={2**64}", "checkpoint=best_models/x"])
    says(message, "`seed` = 18446744073709551616", "less than or equal to 4294967295")


@pytest.mark.parametrize("key", ["data.root", "data.cache_dir", "output.logs_dir", "output.best_dir", "eval.inception_weights"])
def test_a_path_with_a_name_no_file_system_holds_is_refused_by_its_key(tmp_path, key):
    # once OSError "[Errno 36] File name too long" from the first look at the path (vaegen config's is_dir, train's mkdir)
    text = error(tmp_path, MINIMAL, [f"{key}=runs/{'x' * 256}/more"])
    says(text, f"`{key}` = 'runs/{'x' * 256}/more'", "256 bytes long", "at most 255 bytes")
    assert "é" * 128 in error(tmp_path, MINIMAL, [f"{key}={'é' * 128}"])  # 256 bytes in UTF-8
    load(tmp_path, MINIMAL, [f"{key}={'x' * 255}"])  # the longest name is fine


def test_a_run_name_longer_than_a_folder_name_may_be_is_refused(tmp_path):
    says(error(tmp_path, MINIMAL, [f"output.run_name={'r' * 256}"]), f"`output.run_name` = '{'r' * 256}'", "at most 255 characters")
    assert load(tmp_path, MINIMAL, [f"output.run_name={'r' * 255}"]).output.run_name == "r" * 255


def test_a_config_file_name_no_file_system_holds_is_named(tmp_path):
    path = tmp_path / ("x" * 300 + ".yaml")
    says(refused(load_config, path), str(path), "cannot exist", "305 bytes long")


def test_a_path_with_a_nul_character_is_refused_by_its_key(tmp_path):
    # YAML writes NUL as "\0"; once a ValueError ("embedded null byte") from train's mkdir of output.logs_dir
    says(error(tmp_path, MINIMAL, ['output.logs_dir="runs/a\\0b"']), "`output.logs_dir` = 'runs/a\\x00b'", "NUL character")


# --- one formatter for pydantic's errors, wherever they come from --------------------------------------------------


def test_a_value_of_the_wrong_kind_is_told_what_the_setting_takes(tmp_path):
    message = error(tmp_path, MINIMAL, ["model.widths=[8, abc]", "data.root=[1, 2]", "train.device=5"])
    says(message, "has 3 problems", "`model.widths` item 2 = 'abc'", "a number")  # which item, not the whole list
    says(message, "`data.root` = [1, 2]", "a path")  # once "Input is not a valid path for <class 'pathlib.Path'>"
    says(message, "`train.device` = 5", "a name")
    assert "<class" not in message


class _Spaced(Section):
    space: dict[str, _Inner] = Field(default_factory=dict)


def test_keys_under_a_mapping_of_sections_are_named_by_their_whole_path():
    # a sweep's `space: {optim.lr: {...}}`: the free key is part of the path, and its section's keys are checked
    message = refused(config_from_dict, {"space": {"optim.lr": {"m": 1}}}, schema=_Spaced)
    says(message, "unknown key `space.optim.lr.m`", "valid keys in `space.optim.lr`: n")
    says(refused(config_from_dict, {"space": {"a": {"n": "x"}}}, schema=_Spaced), "`space.a.n` = 'x'", "a number")


def test_a_key_path_is_checked_with_the_same_words_as_a_config():
    from vaegen.config import check_key_path

    says(refused(check_key_path, "model.latnt_dim", "sweep.yaml: space"), "sweep.yaml: space", "did you mean `latent_dim`?")
    says(refused(check_key_path, "model", "S"), "`model` is a whole section", "model.latent_dim")
    says(refused(check_key_path, "train.epochs.x", "S"), "`train.epochs` is a value, not a section")
    check_key_path("optim.lr", "S")  # a setting: no error


# --- the config reference (docs/config.md) is generated from the schema --------------------------------------------


def _schema_settings(model: type, prefix: str = ""):
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            yield from _schema_settings(info.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


@pytest.mark.parametrize("schema", ["Config", "TestConfig"])
def test_every_setting_says_what_it_is_for(schema):
    import vaegen.config

    undescribed = [key for key, info in _schema_settings(getattr(vaegen.config, schema)) if not info.description]
    assert not undescribed, f"add a Field(description=...) to {undescribed}: it is the key's line in docs/config.md"


def test_the_config_reference_is_current():
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    page = reference.render()
    assert all(f"`{key}`" in page for key, _ in _schema_settings(Config))  # every key has its row
    current = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert current == page, "docs/config.md is stale: regenerate it with `python scripts/config_reference.py`"

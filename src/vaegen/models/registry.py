"""The model registry: `model.name` -> the builder of its module and the family that trains it, and the checks a
config passes before that family trains it (`vaegen train`, `vaegen config` and a sweep's trials alike)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vaegen.config import MODEL_NAMES, Config, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.family import Family

MODELS: dict[str, Callable[..., nn.Module]] = {}
FAMILIES: dict[str, Family] = {}  # model name -> the family that trains and evaluates it


def register_model(name: str, family: Family):
    """Register a module builder under `model.name: <name>`, trained as `family`; the config accepts the name."""

    def add(builder):
        MODELS[name] = builder
        FAMILIES[name] = family
        MODEL_NAMES.add(name)
        return builder

    return add


def build_model(cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int) -> nn.Module:
    return MODELS[cfg.name](cfg, image_size=image_size, channels=channels, num_classes=num_classes)


def family_of(cfg: ModelConfig) -> Family:
    return FAMILIES[cfg.name].configured(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolved_and_checked(config: Config) -> tuple[Config, Family]:
    """`config` as its family trains it (a second stage takes its first stage's settings) and that family, once every
    refusal that needs the family has passed: the image size its layers halve, its own rules, the loop's image-space
    options it cannot take. ConfigError otherwise, before any data loads."""
    config = family_of(config.model).resolve(config)
    family = family_of(config.model)
    check_image_size(config.data.image_size, *family.halvings(config.model))
    family.check(config)
    refuse_image_options(config, family)
    return config, family


def check_image_size(image_size: tuple[int, int], times: int, why: str) -> None:
    """Both sides of the image must halve `times` times (`why` says what halves them), with a size either side offered."""
    factor = 2**times
    for axis, size in zip(("height", "width"), image_size):
        if size % factor:
            lower = size - size % factor
            raise ConfigError(f"data.image_size {axis} {size} is not divisible by {factor} (2**{times} for {why}); use "
                              + (f"{lower} or {lower + factor}." if lower else f"{factor}."))


def refuse_image_options(config: Config, family: Family) -> None:
    """The loop's image-space options need images from the forward pass, and the adversarial head a `recon` term to
    weigh its own against: refused before any data loads, not at the epoch they start."""
    makes_images = type(family).images is not Family.images
    wanted = {"loss.perceptual": config.loss.perceptual != "none" and not makes_images,
              "adversarial.enabled": config.adversarial.enabled and not (makes_images and "recon" in family.terms)}
    refused = [key for key, bad in wanted.items() if bad]
    if refused:
        raise ConfigError(
            f"{' and '.join(refused)} work on the images a model makes in its forward pass and (the adversarial head) "
            f"its reconstruction term, which the {family.name} family of model.name {config.model.name} does not "
            f"give; turn {' and '.join(refused)} off for this model."
        )

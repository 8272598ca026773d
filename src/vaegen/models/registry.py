"""The model registry: `model.name` -> the builder of its module and the family that trains it."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vaegen.config import MODEL_NAMES, ModelConfig
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



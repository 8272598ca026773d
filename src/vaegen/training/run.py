"""A training run's state (`Run`): what a step uses, and what last.pt holds so a resumed run ends as an unbroken one."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vaegen.checkpoint import load_state_checked
from vaegen.config import Config
from vaegen.errors import CheckpointError
from vaegen.models import Family, build_model, family_of
from vaegen.training import distributed
from vaegen.training.accel import CapturedStep, StepOptions, compile_step
from vaegen.training.adversarial import Adversary
from vaegen.training.ema import EMA
from vaegen.training.perceptual import PerceptualLoss
from vaegen.training.schedules import build_beta_schedule

STATE_FORMAT = 1  # last.pt's layout; what release 0.1.0 wrote keeps loading


@dataclass
class Run:
    config: Config
    family: Family
    model: nn.Module  # the plain module: what checkpoints hold and best models ship
    step_model: nn.Module  # what the training step calls: the model, DDP-wrapped and compiled as options say
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # a no-op unless precision is fp16
    device: torch.device
    options: StepOptions
    classes: list[str]
    shuffle: torch.Generator  # the batch order, shared by every process
    beta_at: Callable[[int], float]
    ema: EMA | None = None
    adversary: Adversary | None = None
    perceptual: PerceptualLoss | None = None
    captured: CapturedStep | None = None  # the step recorded as a CUDA graph (train.cuda_graph)
    epoch: int = 0  # epochs done
    criterion: str = "val_nelbo"  # the metric that picks the best model
    best_epoch: int | None = None
    best_value: float | None = None
    split_sizes: tuple[int, int] | None = None  # training and validation images: a resume on other data says so

    @property
    def eval_model(self) -> nn.Module:
        """What evaluates and ships: the weight average (train.ema) in place of the live weights."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        return {
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"adversary": self.adversary.state_dict()} if self.adversary is not None else {}),
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
            "best_criterion": self.criterion,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "classes": self.classes,
            **({"split_sizes": list(self.split_sizes)} if self.split_sizes is not None else {}),
        }

    def load_state_dict(self, state: dict, source: str) -> None:
        """Continue from last.pt's `state`; the config's optimizer settings win (`--resume --set optim.lr=...`)."""
        if state.get("classes") != self.classes:
            raise CheckpointError(
                f"{source} was trained on classes {state.get('classes')} but data.root now has {self.classes}. "
                f"Resume with the data the run started with, or start a new run."
            )
        saved = state.get("split_sizes")  # last.pt files before 2026-12-05 do not say
        if saved is not None and self.split_sizes is not None and tuple(saved) != self.split_sizes:
            warnings.warn(
                f"{source} was trained on {saved[0]} training and {saved[1]} validation images, and the data now gives "
                f"{self.split_sizes[0]} and {self.split_sizes[1]}: the split and the batch order are drawn anew, so "
                f"the resumed run is not the one an unbroken run would give, and its best {self.criterion} so far was "
                f"measured on other validation images. Resume with the data the run started with, or start a new run.",
                stacklevel=2,
            )
        load_state_checked(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        optim = self.config.optim
        for group in self.optimizer.param_groups:
            group.update(lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # train.ema turned on at this resume: the average starts from the resumed weights
            self.ema = EMA(self.model, self.config.train.ema)
        if self.adversary is not None and "adversary" in state:
            self.adversary.load_state_dict(state["adversary"])
        self.epoch = state["epoch"]
        # a NaN best (saved before NaN stopped runs) would compare False with every later score and block all exports
        best = state.get("best_value")
        if state.get("best_criterion") == self.criterion and best is not None and math.isfinite(best):
            self.best_epoch, self.best_value = state["best_epoch"], best


def build_run(config: Config, device: torch.device, options: StepOptions, classes: list[str]) -> Run:
    """The training state of a new run, on `device`; draws its initial weights from the global RNG (seeded first)."""
    family = family_of(config.model)
    model = build_model(config.model, config.data.image_size, config.data.channels, len(classes)).to(device)
    family.prepare(model, config, classes)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model, fused=options.fused_optimizer, capturable=options.step_graph)
    step_model = compile_step(distributed.wrap(model, device, config.train.sync_batchnorm), options)
    # in this order: each draws its initial weights from the global RNG
    adversary = Adversary(config.adversarial, config.data.channels, device) if config.adversarial.enabled else None
    perceptual = PerceptualLoss(config.loss.perceptual, config.loss.perceptual_weight, device) if config.loss.perceptual != "none" else None
    return Run(
        config=config, family=family, model=model, step_model=step_model, optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=options.precision == "fp16"), device=device, options=options,
        classes=list(classes), shuffle=torch.Generator().manual_seed(config.train.seed), beta_at=build_beta_schedule(config.beta),
        ema=EMA(model, config.train.ema) if config.train.ema else None, adversary=adversary, perceptual=perceptual,
    )


def build_optimizer(config: Config, model: nn.Module, fused: bool = False, capturable: bool = False) -> torch.optim.Optimizer:
    """`capturable`: its step counters live on the device, so a CUDA graph can record the update."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optim.name]
    # fused=False would also turn off torch's default foreach kernels: None leaves the choice to torch
    return cls(model.parameters(), lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay,
               fused=fused or None, capturable=capturable)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


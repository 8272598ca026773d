"""The moving average of the weights that evaluates and ships (not swa_utils.AveragedModel: it syncs every update)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        # a short window at first, so the average does not hold on to the untrained initial weights
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(_floats(self.module), _floats(model), weight)
        # BatchNorm's batch counters are integers: take the live ones
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if not mine.is_floating_point():
                mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _floats(model: nn.Module) -> list[torch.Tensor]:
    """Parameters and floating-point buffers (BatchNorm running statistics), in a fixed order."""
    return [*model.parameters(), *(buffer for buffer in model.buffers() if buffer.is_floating_point())]

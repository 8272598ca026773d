"""How the training step uses the hardware: precision, memory layout, compilation, data placement.

Each option is `auto` by default and resolves once per run, for the device at hand, into a
`StepOptions`; the training loop reads only that. The rules (measured, see docs/benchmarks.md):
bf16 autocast, channels_last, torch.compile and cuDNN's autotuner on CUDA; fp32 eager on CPU, where compile costs
more than it returns, and channels_last only for images of at most 32x32 px: there the step was
faster on both CPUs measured (by 10-13 % on an AMD EPYC), at 64 px slower on an Intel Xeon and no
faster on the EPYC. The fused Adam kernel on both (on CPU it cuts the optimizer step from ~28 ms to
~5 ms at 32 px). torch.compile's mode is torch's default unless `train.compile_mode` sets it:
whether CUDA graphs (`reduce-overhead`) pay for a launch-bound batch-64 step is not measured yet.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from vaegen.config import DataConfig, TrainConfig
from vaegen.errors import ConfigError


# torch.compile modes whose compiled code is captured and replayed as CUDA graphs
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class StepOptions:
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool
    on_device: bool
    fused_optimizer: bool
    compile_mode: str = "default"  # torch.compile's mode, when compile
    cudnn_benchmark: bool = False  # cuDNN picks each convolution's algorithm by timing them (CUDA)
    cuda_graphs: bool = False  # the compiled step replays as CUDA graphs (compile_mode on CUDA)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def _compiled(self) -> str:
        if not self.compile:
            return "eager"
        if self.compile_mode == "default":
            return "compiled"
        return f"compiled ({self.compile_mode}{', CUDA graphs' if self.cuda_graphs else ''})"

    def describe(self) -> str:
        return (
            f"{self.precision}, {'channels_last' if self.channels_last else 'NCHW'}, "
            f"{self._compiled()}, {'fused' if self.fused_optimizer else 'plain'} optimizer, "
            f"data {'on the device' if self.on_device else 'streamed from host'}"
            + (", cuDNN autotuned" if self.cudnn_benchmark else "")
        )


def resolve_device(name: str | torch.device, key: str = "train.device") -> torch.device:
    """`auto` (CUDA, then MPS, then the CPU) or a named device that exists here; `key` names the setting in errors."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key} is {name!r}, which is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {name} but CUDA is not available here; use {key}: auto or cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key} is {name} but MPS is not available here; use {key}: auto or cpu.")
    return device


def resolve_step_options(train: TrainConfig, data: DataConfig, device: torch.device, data_bytes: int) -> StepOptions:
    cuda = device.type == "cuda"
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError(f"train.precision fp16 needs CUDA (its loss scaling is CUDA-only); on {device} use fp32 or bf16.")
    on_device = data.on_device
    if on_device == "auto":
        on_device = not cuda or data_bytes < 0.5 * torch.cuda.mem_get_info(device)[0]
    compiled = cuda if train.compile == "auto" else bool(train.compile)
    graphs = compiled and train.compile_mode in CUDA_GRAPH_MODES
    if graphs and not cuda:
        warnings.warn(
            f"train.compile_mode {train.compile_mode} replays the step as CUDA graphs, which needs CUDA; on {device} "
            "the step is compiled without them.",
            stacklevel=2,
        )
    return StepOptions(
        precision=precision,
        channels_last=(cuda or _small_images(data)) if train.channels_last == "auto" else bool(train.channels_last),
        compile=compiled,
        on_device=bool(on_device),
        fused_optimizer=device.type in ("cuda", "cpu") and _has_fused_adam(device),
        compile_mode=train.compile_mode if compiled else "default",
        cuda_graphs=graphs and cuda,
        cudnn_benchmark=cuda if train.cudnn_benchmark == "auto" else bool(train.cudnn_benchmark) and cuda,
    )


def apply_backend_flags(options: StepOptions) -> None:
    """Process-wide settings the step options imply; set before the first convolution runs."""
    # every training batch has one shape, so the one-off timing of each convolution's algorithms
    # is repaid every step; evaluation adds a handful of shapes, each timed once
    torch.backends.cudnn.benchmark = options.cudnn_benchmark


def _small_images(data: DataConfig) -> bool:
    height, width = data.image_size
    return height * width <= 32 * 32


def _has_fused_adam(device: torch.device) -> bool:
    # CPU kernels arrived in torch 2.4; the constructor is the only public way to ask
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def autocast(options: StepOptions, device: torch.device):
    if options.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=options.autocast_dtype)


def compile_step(model: torch.nn.Module, options: StepOptions) -> torch.nn.Module:
    """The module the training step calls: compiled when asked, the model itself otherwise.

    Weights stay shared, so checkpoints keep using `model.state_dict()` (no `_orig_mod.` prefixes).
    """
    if not options.compile:
        return model
    import torch._dynamo

    # where a graph fails to compile, dynamo runs it eagerly and logs why instead of stopping training
    torch._dynamo.config.suppress_errors = True
    try:
        # every training batch has the same shape (the last partial one is dropped): no dynamic shapes
        return torch.compile(model, dynamic=False, mode=None if options.compile_mode == "default" else options.compile_mode)
    except Exception as exc:  # e.g. no compiler toolchain on this platform
        warnings.warn(f"torch.compile is unavailable here ({exc}); training eagerly.", stacklevel=2)
        return model

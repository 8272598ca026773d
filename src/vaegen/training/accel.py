"""How the training step uses the hardware: precision, memory layout, compilation, data placement, CUDA graphs.

Each `auto` option resolves once per run into `StepOptions` by rules measured in docs/benchmarks.md: on CUDA bf16,
channels_last, torch.compile and cuDNN's autotuner; on CPU fp32 eager, channels_last only up to 32x32 px.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from vaegen.config import DataConfig, TrainConfig
from vaegen.errors import ConfigError


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
    step_graph: bool = False  # the whole step is captured once and replayed (train.cuda_graph)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def describe(self) -> str:
        compiled = f"compiled ({self.compile_mode}{', CUDA graphs' if self.cuda_graphs else ''})"
        if not self.compile or self.compile_mode == "default":
            compiled = "compiled" if self.compile else "eager"
        return (
            f"{self.precision}, {'channels_last' if self.channels_last else 'NCHW'}, {compiled}, "
            f"{'fused' if self.fused_optimizer else 'plain'} optimizer, "
            f"data {'on the device' if self.on_device else 'streamed from host'}"
            + (", cuDNN autotuned" if self.cudnn_benchmark else "")
            + (", the whole step replayed as a CUDA graph" if self.step_graph else "")
        )


def resolve_device(name: str | torch.device, key: str = "train.device") -> torch.device:
    """`auto` (CUDA, then MPS, then the CPU) or a named device that exists here; `key` names the setting in errors."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key} is {name!r}, which is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(device.type)
    if available is not None and not available():
        raise ConfigError(f"{key} is {name} but {device.type.upper()} is not available here; use {key}: auto or cpu.")
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
    graphs = compiled and train.compile_mode in ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs
    if graphs and not cuda:
        warnings.warn(f"train.compile_mode {train.compile_mode} replays the step as CUDA graphs, which needs CUDA; "
                      f"on {device} the step is compiled without them.", stacklevel=2)
    if train.cuda_graph and not cuda:
        warnings.warn(f"train.cuda_graph replays the step as a CUDA graph, which needs CUDA; on {device} the step runs "
                      "as usual.", stacklevel=2)
    # on CPU channels_last was 10-13 % faster at 32x32 px, and slower or no faster at 64 px
    small = data.image_size[0] * data.image_size[1] <= 32 * 32
    return StepOptions(
        precision=precision, compile=compiled, on_device=bool(on_device),
        channels_last=(cuda or small) if train.channels_last == "auto" else bool(train.channels_last),
        fused_optimizer=device.type in ("cuda", "cpu") and _has_fused_adam(device),
        compile_mode=train.compile_mode if compiled else "default", cuda_graphs=graphs and cuda,
        cudnn_benchmark=cuda if train.cudnn_benchmark == "auto" else bool(train.cudnn_benchmark) and cuda,
        step_graph=train.cuda_graph and cuda,
    )


def apply_backend_flags(options: StepOptions) -> None:
    """Set before the first convolution: every training batch has one shape, so timing each algorithm once pays."""
    torch.backends.cudnn.benchmark = options.cudnn_benchmark


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
    # a captured graph must not keep autocast's cast weights cached from the capture (torch.cuda.graphs' rule)
    return torch.autocast(device.type, dtype=options.autocast_dtype, cache_enabled=not options.step_graph)


def compile_step(model: torch.nn.Module, options: StepOptions) -> torch.nn.Module:
    """The model, compiled when asked (its weights stay shared: checkpoints hold no `_orig_mod.` prefixes)."""
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


class CapturedStep:
    """The training step recorded once as a CUDA graph and replayed (`train.cuda_graph`): the host only copies in.

    The first `warmup` calls run `step` on the capture's stream (so compilation, cuDNN's search and the optimizer's
    state exist before capture), the next records it into static tensors, and every later call replays it.
    `step(x, y, beta)` must not sync with the host; `beta` reaches it as a device tensor.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor], device: torch.device, warmup: int = 3):
        self.step = step
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(device)
        self.beta = torch.zeros((), device=device)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.terms: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, beta: float) -> torch.Tensor:
        """One step on batch x (labels y); returns the step's outputs, a tensor of its own."""
        self.beta.fill_(beta)
        if self.graph is not None:
            self.x.copy_(x)
            if y is not None:
                self.y.copy_(y)
            self.graph.replay()
            return self.terms.clone()  # the next replay overwrites self.terms
        self.calls += 1
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        if self.calls <= self.warmup:
            with torch.cuda.stream(self.stream), warnings.catch_warnings():
                # the optimizer is built capturable for the recording; these steps run it uncaptured on purpose
                warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
                terms = self.step(x, y, self.beta)
            main.wait_stream(self.stream)
            return terms
        self.x, self.y = x.clone(), None if y is None else y.clone()
        self.graph = torch.cuda.CUDAGraph()
        # recording runs nothing on the GPU; this call's step is the first replay
        try:
            with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                self.terms = self.step(self.x, self.y, self.beta)
        except RuntimeError as exc:  # something in the step synced with the host or cannot be recorded
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            raise ConfigError(
                f"the training step could not be recorded as a CUDA graph ({str(exc).splitlines()[0][:200]}); "
                "set train.cuda_graph: false (checkpoints written before this are intact)."
            ) from exc
        main.wait_stream(self.stream)
        self.graph.replay()
        return self.terms.clone()

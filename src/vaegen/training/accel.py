"""How the training step uses the hardware: precision, memory layout, compilation, data placement.

Each option is `auto` by default and resolves once per run, for the device at hand, into a
`StepOptions`; the training loop reads only that. The rules (measured, see docs/benchmarks.md):
bf16 autocast, channels_last, torch.compile and cuDNN's autotuner on CUDA; fp32 eager on CPU, where compile costs
more than it returns, and channels_last only for images of at most 32x32 px: there the step was
faster on both CPUs measured (by 10-13 % on an AMD EPYC), at 64 px slower on an Intel Xeon and no
faster on the EPYC. The fused Adam kernel on both (on CPU it cuts the optimizer step from ~28 ms to
~5 ms at 32 px). torch.compile's mode is torch's default unless `train.compile_mode` sets it:
whether CUDA graphs (`reduce-overhead`, or `train.cuda_graph` for the whole step with its loss and
optimizer) pay for a launch-bound batch-64 step is not measured yet.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

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
    step_graph: bool = False  # the whole step (forward, loss, backward, optimizer) is captured once and replayed (train.cuda_graph)

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
            + (", the whole step replayed as a CUDA graph" if self.step_graph else "")
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
    if train.cuda_graph and not cuda:
        warnings.warn(f"train.cuda_graph replays the step as a CUDA graph, which needs CUDA; on {device} the step runs as usual.", stacklevel=2)
    return StepOptions(
        precision=precision,
        channels_last=(cuda or _small_images(data)) if train.channels_last == "auto" else bool(train.channels_last),
        compile=compiled,
        on_device=bool(on_device),
        fused_optimizer=device.type in ("cuda", "cpu") and _has_fused_adam(device),
        compile_mode=train.compile_mode if compiled else "default",
        cuda_graphs=graphs and cuda,
        cudnn_benchmark=cuda if train.cudnn_benchmark == "auto" else bool(train.cudnn_benchmark) and cuda,
        step_graph=train.cuda_graph and cuda,
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
    # a captured graph must not keep autocast's cast weights cached from the capture (torch.cuda.graphs' rule)
    return torch.autocast(device.type, dtype=options.autocast_dtype, cache_enabled=not options.step_graph)


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


class CapturedStep:
    """The training step recorded once as a CUDA graph and then replayed (`train.cuda_graph`).

    At a small batch the host can be the bottleneck: every step runs Python, autograd and one
    launch per kernel, which may take longer than the GPU's work. A replay launches the recorded
    step as one unit, so the host only copies the batch in. It is the same `step` function: the
    first `warmup` calls run it as usual (on the capture's stream, so compilation, cuDNN's
    algorithm search, the optimizer's state and every per-stream handle exist before capture),
    the next one records it into static input and output tensors, and every call replays it.
    `step(x, y, beta)` must not sync with the host, and `beta` reaches it as a device tensor.
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

"""Errors a user can fix, each with the exit code the CLI returns for it.

Anything raised as a `VaegenError` is printed as one paragraph without a traceback
(`vaegen --debug ...` shows it). Every message names the problem and the fix.
"""


def plural(n: int, noun: str) -> str:
    """'1 image', '2 images': messages count things."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def pixel_size(height: int, width: int) -> str:
    """'96×64 px' is 96 wide and 64 tall: sizes read width first, as photo tools write them, although
    data.image_size and tensors hold [height, width]."""
    return f"{width}×{height} px"


class VaegenError(Exception):
    exit_code = 1


class ConfigError(VaegenError):
    """Bad YAML, unknown keys, wrong types or values out of range."""

    exit_code = 2


class DataError(VaegenError):
    """Missing or empty data folders, unreadable images."""

    exit_code = 2


class CheckpointError(VaegenError):
    """A checkpoint that is missing, corrupt, unsafe or from another model."""

    exit_code = 2


class CompareError(VaegenError):
    """`vaegen compare` was given a folder that is not a run, model or sweep, too few runs, or metrics it cannot read."""

    exit_code = 2


class ProtocolMismatch(CompareError):
    """`vaegen compare --strict`: the runs' FD/KID were measured under different protocols, so they do not compare."""


class TrainingDiverged(VaegenError):
    """The loss (or weights, samples, metrics) became NaN or infinite; checkpoints written before it are kept.
    `diagnosis` says what happened and what to change; `then`, what to do next with the run (a sweep's trial says
    its own); `resumable`: the run has a checkpoint to continue from, which vaegen.training.loop.train names."""

    exit_code = 3

    def __init__(self, diagnosis: str, then: str | None = None, resumable: bool = False):
        super().__init__(f"{diagnosis}; {then}." if then else diagnosis)
        self.diagnosis, self.then, self.resumable = diagnosis, then, resumable


class NonFiniteSamples(TrainingDiverged):
    """A model's outputs (generated images, their features, posterior means) are NaN or infinite, or too far out
    for the maths that uses them: `problem` says which, after `what` ("the posterior means ...")."""

    def __init__(self, what: str, problem: str = "became NaN or infinite", count: str = ""):
        super().__init__(
            f"{count}{what} {problem}: the model has diverged. Use an earlier checkpoint, or retrain with a lower "
            f"optim.lr (or optim.grad_clip: 1.0)."
        )
        self.what, self.problem = what, problem


def check_finite_outputs(bad: int, total: int, what: str) -> None:
    """NaN or infinite outputs must never reach linear algebra (FID, a mixture fit): LAPACK may abort the process on them."""
    if bad:
        raise NonFiniteSamples(what, "hold NaN or infinite values, which no distance or mixture fit can take", count=f"{bad} of {total} ")


class OutOfMemory(VaegenError):
    """The model or its batches do not fit in GPU or host memory."""

    exit_code = 4

"""Training, top to bottom: setup, data, model, optimizer, the loop, evaluation, checkpoints.

One epoch = `train_one_epoch` (the training step is inside it, in plain sight) followed by
`evaluate` on the validation split. After every epoch the whole training state goes to
`logs/<run>/checkpoints/last.pt` (written on a background thread while the next epoch trains, or
at a later epoch's end if that write is still going), followed by the sample and reconstruction
pictures of the epochs it covers: a run stopped at any point leaves no picture of a model state that no
checkpoint holds (a resumed run draws those epochs' pictures again);
whenever the selection metric improves, the model goes to `best_models/<run>/`. Resuming restores
weights, optimizer, epoch, best score and every RNG stream, so an interrupted run ends with the
same weights as an uninterrupted one. Each run ends with a line saying where its time went.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

import vaegen
from vaegen import distributed
from vaegen.accel import CapturedStep, StepOptions, apply_backend_flags, autocast, compile_step, resolve_device, resolve_step_options
from vaegen.adversarial import Adversary
from vaegen.backbones import resolve_backbone_name, second_opinions
from vaegen.checkpoint import (
    BackgroundWriter,
    StorageError,
    discard,
    file_in_the_way,
    host_copy,
    load_state_checked,
    load_training_state,
    make_output_folder,
    save_model,
    save_training_state,
    write_text_atomic,
    written_together,
)
from vaegen.config import Config
from vaegen.data import DecodedImages, batches, default_cache_dir, load_splits, steps_per_epoch, to_device
from vaegen.density import SAMPLER_FILE, LatentGMM, check_mixture_data, fit_model_density
from vaegen.ema import EMA
from vaegen.errors import (
    RUN_DIR,
    CheckpointError,
    ConfigError,
    NonFiniteSamples,
    OutOfMemory,
    TrainingDiverged,
    VaegenError,
    pixel_size,
    plural,
)
from vaegen.fid import eval_batch_size, metric_names, run_evaluator, score_model
from vaegen.fidelity import conditional_fidelity, label_agreement, load_or_train_classifier
from vaegen.losses import vae_loss
from vaegen.models import build_model, count_parameters
from vaegen.perceptual import PerceptualLoss, evaluation_network_problem
from vaegen.plots import class_blocks, for_viewing, image_grid, reconstruction_grid, samples_per_class, save_png
from vaegen.runs import RunPaths, owned
from vaegen.samplers import per_class_samples
from vaegen.schedules import build_beta_schedule
from vaegen.tracking import Tracker, draw_curves

@dataclass(frozen=True)
class TrainResult:
    paths: RunPaths
    epochs_run: int
    criterion: str
    best_epoch: int | None
    best_value: float | None
    last_samples: Path | None


class PhaseClock:
    """Wall seconds per part of a run, so a slow run shows where its time goes. On CUDA, GPU work a
    phase queued may finish in the next phase's first sync; every phase here ends with one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        total = sum(self.seconds.values())
        return ", ".join(f"{phase} {seconds:.1f} s ({seconds / total:.0%})" for phase, seconds in self.seconds.items())


# ---------------------------------------------------------------------------------------
# Setup helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(config: Config, model: torch.nn.Module, fused: bool = False, capturable: bool = False) -> torch.optim.Optimizer:
    """`capturable`: its step counters live on the device, so a CUDA graph can record the update."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optim.name]
    kwargs = {**({"fused": True} if fused else {}), **({"capturable": True} if capturable else {})}
    return cls(model.parameters(), lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay, **kwargs)


def rng_state(shuffle: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Console:
    """Prints above the progress bar and keeps a copy in logs/<run>/train.log."""

    def __init__(self, log_file: Path, echo: bool = True):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        self.echo = echo

    def __call__(self, message: str) -> None:
        if self.echo:
            tqdm.write(message)
        keep_in_log(self.log_file, message)


def keep_in_log(log_file: Path, message: str) -> None:
    """One more line in train.log, which keeps what the console showed."""
    with log_file.open("a", encoding="utf-8") as handle:  # β and other non-ASCII on any platform
        handle.write(message + "\n")


@contextlib.contextmanager
def warnings_kept_in(log_file: Path):
    """Warnings shown during a run (on stderr) go to train.log too, which keeps what the console showed."""
    with warnings.catch_warnings():  # restores warnings.showwarning on the way out
        show = warnings.showwarning

        def show_and_keep(message, category, filename, lineno, file=None, line=None):
            show(message, category, filename, lineno, file, line)
            if log_file.parent.is_dir() and distributed.is_main():
                keep_in_log(log_file, f"warning: {message}")

        warnings.showwarning = show_and_keep
        yield


# ---------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation


def to_input(images_u8: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = images_u8.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(
    model: torch.nn.Module,
    step_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor | None,
    config: Config,
    options: StepOptions,
    beta: float | torch.Tensor,
    device: torch.device,
    ema: EMA | None = None,
    adversary: Adversary | None = None,
    perceptual: PerceptualLoss | None = None,
) -> torch.Tensor:
    """One optimizer step on batch x in [0, 1]; returns (total, recon, KL, skipped) on the device.
    Never synced with the host, unless optim.skip_grad_norm is set: then the update is dropped (skipped = 1)
    when the gradient norm is above it or not finite.
    With an `adversary` (after its warm-up) the decoder also learns to fool it, and it takes its own step;
    a `perceptual` term adds a frozen network's feature distance to the objective."""
    if options.cuda_graphs:  # a new step: the graphs' outputs of the previous one may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    with autocast(options, device):
        logits, mu, logvar = step_model(x, y)
    terms = vae_loss(logits.float(), x, mu.float(), logvar.float(), beta, config.loss.recon)
    objective = terms.total
    fake = torch.sigmoid(logits.float()) if perceptual is not None or adversary is not None else None
    if perceptual is not None:
        objective = objective + perceptual(fake, x)
    if adversary is not None:
        objective = objective + adversary.generator_term(fake, terms.recon, model.last_layer)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(objective).backward()  # the scaler is a no-op unless precision is fp16
    skipped = False
    if config.optim.grad_clip is not None or config.optim.skip_grad_norm is not None:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip or math.inf)
        if config.optim.skip_grad_norm is not None:
            norm = float(norm)
            skipped = not norm <= config.optim.skip_grad_norm  # NaN compares False: skipped too
    if skipped:
        scaler.update()  # fp16: the scale still follows the unscaled gradients' inf checks
    else:
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
    if adversary is not None:
        adversary.discriminator_step(x, fake)
    skipped_flag = torch.zeros_like(terms.total.detach())  # filled in place: a host-made tensor would sync on CUDA
    if skipped:
        skipped_flag.fill_(1.0)
    return torch.stack([*(t.detach() for t in terms), skipped_flag])


def train_one_epoch(
    model: torch.nn.Module,
    step_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: DecodedImages,
    config: Config,
    options: StepOptions,
    beta: float,
    epoch: int,
    device: torch.device,
    shuffle: torch.Generator,
    ema: EMA | None = None,
    adversary: Adversary | None = None,
    perceptual: PerceptualLoss | None = None,
    captured: CapturedStep | None = None,
) -> dict[str, float]:
    """One pass over the training split. `step_model` is `model`, compiled when options.compile;
    `captured` is the same step recorded as a CUDA graph (train.cuda_graph), replayed in its place."""
    model.train()
    conditional = model.is_conditional
    total_steps = steps_per_epoch(len(data.images), config.train.batch_size)
    # Loss sums stay on the device and are read only every log_every steps: no per-step sync.
    sums = torch.zeros(4, device=device)  # total, recon, KL (per-image sums), skipped updates
    first_bad_step = torch.tensor(-1, device=device)
    seen = 0
    start = time.perf_counter()
    progress = tqdm(total=total_steps, desc=f"epoch {epoch}/{config.train.epochs}", unit="batch", leave=False, disable=None)
    for step, (images_u8, labels) in enumerate(
        batches(data, config.train.batch_size, generator=shuffle, hflip=config.data.hflip), start=1
    ):
        images_u8, labels = distributed.shard(images_u8, labels)  # under torchrun: this process's share
        x = to_input(images_u8, device, options.channels_last)
        y = labels.to(device) if conditional else None
        if captured is not None:
            terms = captured(x, y, beta)
        else:
            terms = train_step(model, step_model, optimizer, scaler, x, y, config, options, beta, device, ema, adversary, perceptual)
        sums[:3] += terms[:3] * len(x)
        sums[3] += terms[3]
        seen += len(x)
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(terms[0]), step, first_bad_step)
        if step % config.train.log_every == 0 or step == total_steps:
            bad = int(distributed.all_reduce_max(first_bad_step))  # every process stops at the same step
            if bad >= 0:
                progress.close()
                raise _diverged(config, epoch, beta, f"the loss became NaN or infinite at epoch {epoch}, step {bad}")
            progress.set_postfix(loss=f"{float(sums[0]) / seen:.2f}")
        progress.update(1)
    progress.close()
    totals = distributed.all_reduce_sum(torch.cat([sums[:3], torch.tensor([float(seen)], device=device)]))
    sums_per_image, seen = totals[:3], float(totals[3])
    total, recon, kl = (sums_per_image / seen).tolist()
    elapsed = time.perf_counter() - start
    adversarial = adversary.epoch_stats() if adversary is not None else {}
    # every process saw the same (all-reduced) gradients, so each skipped the same steps: no reduction
    skipped = {"skipped_steps": int(sums[3])} if config.optim.skip_grad_norm is not None else {}
    return {"train_loss": total, "train_recon": recon, "train_kl": kl, "train_nelbo": recon + kl, **adversarial, **skipped,
            "images_per_s": seen / elapsed}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DecodedImages, config: Config, beta: float, device: torch.device) -> dict:
    """Validation loss with fixed noise: comparable across epochs, and it never touches the training RNG.
    val_mse (squared error per image of the posterior-mean reconstruction) compares runs whatever their loss.
    Nothing (an empty dict) without validation images (data.val_fraction: 0)."""
    if len(data.images) == 0:
        return {}
    model.eval()
    noise = torch.Generator(device=device).manual_seed(config.train.seed + 1)
    sums = torch.zeros(4, device=device)
    for images_u8, labels in batches(data, config.train.batch_size):
        x = to_input(images_u8, device)
        y = labels.to(device) if model.is_conditional else None
        logits, mu, logvar = model(x, y, generator=noise)
        squared_error = (model.decode(mu, y) - x).pow(2).sum() / len(x)
        sums += torch.stack([*vae_loss(logits, x, mu, logvar, beta, config.loss.recon), squared_error]) * len(x)
    total, recon, kl, mse = (sums / len(data.images)).tolist()
    return {"val_loss": total, "val_recon": recon, "val_kl": kl, "val_nelbo": recon + kl, "val_mse": mse}


def epoch_line(row: dict, epochs: int) -> str:
    """What the console shows of an epoch's metrics row."""
    validation = f"  val {row['val_loss']:.2f} (recon + KL {row['val_nelbo']:.2f})" if "val_loss" in row else ""
    return (
        f"epoch {row['epoch']:>3}/{epochs}  β {row['beta']:.3g}  train {row['train_loss']:.2f} "
        f"(recon {row['train_recon']:.2f}, KL {row['train_kl']:.2f}){validation}  {row['images_per_s']:.0f} img/s"
        + "".join(f"  {key} {value:.4g}" for key, value in row.items() if shown_on_the_epoch_line(key))
    )


def shown_on_the_epoch_line(key: str) -> bool:
    """The evaluation's headline numbers: each network's distances, and how often samples show their class."""
    return key == "cond_fidelity" or (key.startswith(("fd_", "fid_", "kd_", "kid_")) and not key.endswith("_std"))


def _diverged(config: Config, epoch: int, beta: float, what: str) -> TrainingDiverged:
    """The run stops before it saves anything of `epoch`, in which `what` happened ("the loss became NaN ...")."""
    clip = f"optim.grad_clip (now {config.optim.grad_clip})" if config.optim.grad_clip else "optim.grad_clip: 1.0"
    fixes = f"Likely fixes: a lower optim.lr, a lower beta.max, or set {clip}"
    if epoch == 1:  # a resumed run starts at epoch 2 or later: here nothing has been saved yet
        diagnosis = f"{what} (lr {config.optim.lr:g}, β {beta:g}), before anything was saved. {fixes}"
        return TrainingDiverged(f"{diagnosis}; then start the run again.", diagnosis)
    diagnosis = (
        f"{what} (lr {config.optim.lr:g}, β {beta:g}). Nothing from this epoch was saved: the last checkpoint and the "
        f"best model are intact. {fixes}"
    )
    return TrainingDiverged(f"{diagnosis}; then continue with `vaegen train --resume RUN_DIR --set optim.lr=...`.", diagnosis)


@contextlib.contextmanager
def verdict_for_the_others():
    """Under torchrun, process 0 alone validates and evaluates: a divergence it finds there stops every process
    with its words (they would otherwise wait in the next epoch's gradient all-reduce for a process that is gone)."""
    try:
        yield
    except TrainingDiverged as exc:
        distributed.broadcast((str(exc), exc.diagnosis))
        raise
    distributed.broadcast(None)


@contextlib.contextmanager
def _diverged_outputs_stop(config: Config, epoch: int, beta: float):
    """An evaluation that meets NaN samples (or posterior means) stops the run as a NaN loss does."""
    try:
        yield
    except NonFiniteSamples as exc:
        problem = "became NaN or infinite" if "NaN" in exc.problem else exc.problem
        raise _diverged(config, epoch, beta, f"the {exc.what} {problem} at epoch {epoch}'s evaluation") from None


def floating_tensors(name: str, value) -> list[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every floating tensor in a state, nested dicts and lists (optimizer states) included."""
    if isinstance(value, torch.Tensor):
        return [(name, value)] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in floating_tensors(f"{name}.{key}", item)]
    if isinstance(value, (list, tuple)):
        return [pair for index, item in enumerate(value) for pair in floating_tensors(f"{name}.{index}", item)]
    return []


def first_nonfinite_tensor(states: dict[str, object]) -> str | None:
    """The name of the first floating tensor in `states` ({"model": state_dict, ...}) holding NaN or inf, if any,
    read with one host sync: every epoch's end checks every weight and optimizer moment."""
    named = [pair for part, state in states.items() for pair in floating_tensors(part, state)]
    if not named:
        return None
    device = named[0][1].device
    finite = torch.stack([tensor.detach().isfinite().all().to(device) for _, tensor in named]).tolist()
    return next((name for (name, _), ok in zip(named, finite) if not ok), None)


def nonfinite_value(row: dict) -> str | None:
    """The first number of an epoch's metrics row that is NaN or infinite."""
    return next((key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)), None)


# ---------------------------------------------------------------------------------------
# Pictures


@torch.no_grad()
def sample_picture(model, fixed_z: torch.Tensor, classes: list[str], device: torch.device, density: LatentGMM | None = None):
    """The run's sample picture (PIL, enlarged by plots.view_scale), the same draws at every evaluation so
    epochs compare: from the prior it decodes `fixed_z`, from a mixture the same seeded draws. Conditional
    models: one labelled block per class, samples_per_class(len(fixed_z)) in each; from the prior every block
    decodes the same first codes of `fixed_z`, so the blocks differ only by the class."""
    model.eval()
    if not model.is_conditional:
        z = fixed_z if density is None else density.to(device).sample(len(fixed_z), torch.Generator().manual_seed(0))
        images = model.decode(z.to(device), None)
        return for_viewing(image_grid(images), images)
    per_class = samples_per_class(len(fixed_z), model.num_classes)
    images = per_class_samples(model, per_class, seed=0, density=density, prior_codes=fixed_z[:per_class])
    return class_blocks(images, classes)


@torch.no_grad()
def reconstruction_picture(model, data: DecodedImages, count: int, device: torch.device):
    """The first `count` images of `data` above their reconstructions (PIL, enlarged by plots.view_scale)."""
    model.eval()
    x = to_input(data.images[:count], device)
    y = data.labels[:count].to(device) if model.is_conditional else None
    return for_viewing(reconstruction_grid(x, model.reconstruct(x, y)), x)


# ---------------------------------------------------------------------------------------
# The run


def train(
    config: Config,
    paths: RunPaths,
    resume: bool = False,
    on_epoch: Callable[[dict, bool], None] | None = None,
    echo: bool = True,
) -> TrainResult:
    """Run (or with `resume`, continue) one training run into `paths`.

    `on_epoch(row, improved)` is called after each epoch is logged and checkpointed, with the
    epoch's metrics row and whether it just became the best model (a sweep reports to Ray
    Tune through it). `echo=False` keeps the per-epoch lines out of stdout (train.log has them).
    """
    # under torchrun process 0 alone owns (and writes) the folder: another one failing first must not remove it
    owner = owned(paths, new=not resume) if distributed.launched_first() else contextlib.nullcontext()
    try:
        with owner, warnings_kept_in(paths.run_dir / "train.log"):
            return _train(config, paths, resume, on_epoch, echo)
    except BaseException as exc:
        if isinstance(exc, VaegenError) and RUN_DIR in str(exc):  # errors raised deep in the loop name the folder here
            exc.args = (str(exc).replace(RUN_DIR, str(paths.run_dir)),)
        if isinstance(exc, ValueError) and "Expected more than 1 value per channel" in str(exc):
            raise ConfigError(
                f"a training batch of one image reaches a 1×1 feature map, where BatchNorm has nothing to normalise "
                f"over ({str(exc).splitlines()[0][:120]}). Train on batches of at least 2 images: train.batch_size ≥ 2 "
                f"(per process under torchrun) and at least 2 training images, or a larger data.image_size or fewer "
                f"model.widths."
            ) from None
        host_memory = isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
        if not (isinstance(exc, torch.cuda.OutOfMemoryError) or host_memory):
            raise
        raise OutOfMemory(
            f"training ran out of {'GPU' if isinstance(exc, torch.cuda.OutOfMemoryError) else 'host'} memory "
            f"({str(exc).splitlines()[0][:160]}). Lower train.batch_size, data.image_size, model.widths or "
            f"model.latent_dim; checkpoints written before this are intact (continue with --resume)."
        ) from exc


def _train(
    config: Config, paths: RunPaths, resume: bool, on_epoch: Callable[[dict, bool], None] | None, echo: bool
) -> TrainResult:
    clock = PhaseClock()
    setup_started = time.perf_counter()
    distributed.init(config.train.device)
    device = distributed.device_for(resolve_device(config.train.device))
    main_process = distributed.is_main()  # under torchrun only process 0 evaluates, logs and writes
    distributed.check_batch(config.train.batch_size)
    if config.adversarial.enabled and distributed.world_size() > 1:
        raise ConfigError("adversarial.enabled is not supported under torchrun yet; train the VAE-GAN in one process.")
    if config.train.cuda_graph and distributed.world_size() > 1:
        raise ConfigError("train.cuda_graph is not supported under torchrun yet; set train.cuda_graph: false, or train in one process.")
    # both output folders are checked before any training: a best model that cannot be written must
    # not surface only after the first epoch, with no checkpoint to resume from
    make_output_folder(paths.best_dir.parent, "output.best_dir")
    if file_in_the_way(paths.best_dir) is not None:  # the run's own folder is made only when it has a model to hold
        raise StorageError(f"{paths.best_dir} is a file, where the run's best model folder goes; move it, or set output.best_dir or output.run_name.")
    make_output_folder(paths.run_dir, "output.logs_dir")
    say = Console(paths.run_dir / "train.log", echo) if main_process else (lambda message: None)
    # the shared batch order comes from its own generator; the reparameterisation noise differs per process
    seed_everything(config.train.seed + distributed.rank())

    # data: decoded once (cached), split deterministically
    splits = load_splits(config.data, config.train.seed)
    classes = splits.train.classes
    say(
        f"data: {config.data.root} — {len(splits.train.images)} train / {len(splits.val.images)} val images, "
        f"{len(classes)} class(es) {classes}, {pixel_size(*config.data.image_size)}, {plural(config.data.channels, 'channel')}"
    )

    # how the step uses the hardware (precision, layout, compile, data placement)
    options = resolve_step_options(config.train, config.data, device, splits.train.images.nbytes + splits.val.images.nbytes)
    apply_backend_flags(options)
    if options.on_device:
        splits = to_device(splits, device)

    # model and optimizer
    model = build_model(config.model, config.data.image_size, config.data.channels, len(classes)).to(device)
    if config.sampler.name == "gmm":  # found now, not at the first evaluation
        check_mixture_data(splits.train.labels, classes, model.is_conditional)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model, fused=options.fused_optimizer, capturable=options.step_graph)
    scaler = torch.amp.GradScaler(device.type, enabled=options.precision == "fp16")
    step_model = compile_step(distributed.wrap(model, device, config.train.sync_batchnorm), options)
    # built before a resume restores the RNG streams: its initialisation draws from them
    adversary = Adversary(config.adversarial, config.data.channels, device) if config.adversarial.enabled else None
    beta_at = build_beta_schedule(config.beta)
    shuffle = torch.Generator().manual_seed(config.train.seed)
    conditioning = "unconditional" if config.model.conditional == "none" else f"{config.model.conditional} conditioning"
    say(f"model: {config.model.name} ({conditioning}), {count_parameters(model):,} parameters, on {device} ({options.describe()})")

    # FID/KID: the backbone and the real features are set up once; the features are cached on disk
    # refused before any network loads: "auto" is checked here, once it resolves (the build below warns about it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = config.eval.backbone if config.eval.backbone == "none" else resolve_backbone_name(config.eval.backbone, config.eval.inception_weights)
    problem = evaluation_network_problem(config.loss.perceptual, scorer, second_opinions(scorer, config.eval.extra_backbones))
    if problem:
        raise ConfigError(problem + ".")
    evaluator = run_evaluator(config, splits, device) if main_process else None
    perceptual = PerceptualLoss(config.loss.perceptual, config.loss.perceptual_weight, device) if config.loss.perceptual != "none" else None
    class_weights = torch.bincount(splits.train.labels, minlength=len(classes)).float()
    # conditional models: a classifier trained once on the real images checks that samples show their class
    classifier = None
    if model.is_conditional and len(classes) > 1 and main_process:
        classifier = load_or_train_classifier(splits.train, len(classes), config.data.cache_dir or default_cache_dir(), device, config.train.seed)
    criterion = config.output.select
    if config.output.select == "fid" and evaluator is not None:
        criterion = metric_names(evaluator.backbone.name)[0]
    if evaluator is not None:
        say(
            f"evaluation every {config.eval.every} epoch(s): {', '.join(n for b in evaluator.networks for n in metric_names(b))} of "
            f"{config.eval.num_samples} samples against {len(evaluator.real)} real {config.eval.reference} images "
            f"({' and '.join(evaluator.networks)} features); best checkpoint by {criterion}"
        )

    start_epoch, best_epoch, best_value, resumed_ema = 0, None, None, None
    if resume:
        state = load_training_state(paths.last_checkpoint)
        _check_same_data(state, classes, paths)
        load_state_checked(model, state["model"], str(paths.last_checkpoint))
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the config wins, so `--resume --set optim.lr=...` takes effect
            group.update(lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay)
        restore_rng_state(state["rng"], shuffle)
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        # a NaN best (saved before NaN stopped runs) would compare False with every later score and block all exports
        if state.get("best_criterion") == criterion and state["best_value"] is not None and math.isfinite(state["best_value"]):
            best_epoch, best_value = state["best_epoch"], state["best_value"]
        resumed_ema = state.get("ema")
        if adversary is not None and "adversary" in state:
            adversary.load_state_dict(state["adversary"])
        best = f"best {criterion} {best_value:.4g} at epoch {best_epoch}" if best_value is not None else f"no best {criterion} yet"
        say(f"resumed {paths.run_dir} at epoch {start_epoch} ({best})")
        if start_epoch >= config.train.epochs:
            say(f"nothing to do: the run already has {start_epoch} of train.epochs={config.train.epochs}; raise it with --set train.epochs=N")

    # the weight average evaluates and ships in place of the live weights (train.ema)
    ema = EMA(model, config.train.ema) if config.train.ema else None
    if ema is not None and resume and resumed_ema is not None:
        ema.load_state_dict(resumed_ema)
    eval_model = ema.module if ema is not None else model

    config_yaml = config.to_yaml()
    tracker = None
    if main_process:
        write_text_atomic(paths.run_dir / "config.yaml", config_yaml)
        tracker = Tracker(paths.run_dir, config, paths.name, start_epoch)
    # the same latent vectors every evaluation, so sample grids show progress rather than noise
    fixed_z = torch.randn(config.eval.num_grid, config.model.latent_dim, generator=torch.Generator().manual_seed(config.train.seed + 2))
    last_samples = None
    captured = None  # train.cuda_graph: the step itself, recorded once and replayed (the config refused what it cannot hold)
    if options.step_graph:
        captured = CapturedStep(lambda x, y, beta: train_step(model, step_model, optimizer, scaler, x, y, config, options, beta, device, perceptual=perceptual), device)
    writer = BackgroundWriter()
    checkpoint_due = False
    pictures: list[tuple[Path, Image.Image]] = []  # drawn by evaluations, written by the next checkpoint write
    clock.seconds["setup"] = time.perf_counter() - setup_started
    try:
        for epoch in range(start_epoch + 1, config.train.epochs + 1):
            beta = beta_at(epoch)
            adversary_now = adversary if adversary is not None and epoch >= config.adversarial.start_epoch else None
            # compilation and the step's capture happen in the first steps: their cost is shown apart from the steady state
            phase = "training steps"
            if epoch == start_epoch + 1 and (options.compile or options.step_graph):
                phase = "first epoch, compiling" if options.compile else "first epoch, capturing"
            with clock(phase):
                train_stats = train_one_epoch(
                    model, step_model, optimizer, scaler, splits.train, config, options, beta, epoch, device, shuffle, ema, adversary_now, perceptual,
                    captured,
                )
            # a finite loss can still leave non-finite weights (the last update) or moments: never checkpoint those.
            # Every process holds the same state, so all of them stop here together
            broken = first_nonfinite_tensor({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **({"ema": ema.state_dict()} if ema else {})})
            if broken is not None:
                raise _diverged(config, epoch, beta, f"the weights became NaN or infinite in epoch {epoch} ({broken})")
            if not main_process:
                stop = distributed.broadcast(None)  # process 0's verdict on the epoch it validates and evaluates
                if stop is not None:
                    raise TrainingDiverged(*stop)
                continue
            with verdict_for_the_others():  # they wait for it in distributed.broadcast, above
                with clock("validation"):
                    val_stats = evaluate(eval_model, splits.val, config, beta, device)
                row = {"epoch": epoch, "beta": beta, "lr": optimizer.param_groups[0]["lr"], **train_stats, **val_stats}
                protocol, density = None, None
                if epoch % config.eval.every == 0 or epoch == config.train.epochs:
                    with clock("evaluation"), _diverged_outputs_stop(config, epoch, beta):
                        eval_model.eval()
                        density = fit_density(eval_model, splits.train, config, device)
                        samples = sample_picture(eval_model, fixed_z, classes, device, density)
                        shown = splits.val if len(splits.val.images) else splits.train  # data.val_fraction: 0 has no validation images
                        reconstructions = reconstruction_picture(eval_model, shown, min(32, config.eval.num_grid), device)
                        last_samples = paths.run_dir / f"samples_epoch{epoch:04d}.png"
                        pictures += [(last_samples, samples), (paths.run_dir / f"recon_epoch{epoch:04d}.png", reconstructions)]
                        tracker.log_image("samples", samples, epoch)
                        tracker.log_image("reconstructions", reconstructions, epoch)
                        if evaluator is not None:
                            scores = score_model(evaluator, eval_model, config.eval.temperature, class_weights, density)
                            protocol = scores.pop("protocol")
                            row.update(scores)
                        if classifier is not None:
                            row.update(conditional_fidelity(classifier, eval_model, classes, 100, config.train.seed, config.eval.temperature, density))
                            if len(splits.val.images):  # the ceiling: how well it tells real validation images apart
                                row["classifier_val_accuracy"] = label_agreement(classifier, splits.val.images, splits.val.labels)
                bad = nonfinite_value(row)
                if bad is not None:  # never logged, never selected as best, never checkpointed
                    raise _diverged(config, epoch, beta, f"{bad} became {'NaN' if math.isnan(row[bad]) else 'infinite'} at epoch {epoch}")
            tracker.log_epoch(row)
            say(epoch_line(row, config.train.epochs))

            value = row.get(criterion)  # FID exists only in evaluation epochs
            improved = value is not None and (best_value is None or value < best_value)  # ties keep the earlier epoch
            if improved:
                best_epoch, best_value = epoch, value
                with clock("best-model exports"):
                    if density is None:  # selecting on a validation loss can pick an epoch without an evaluation
                        density = fit_density(eval_model, splits.train, config, device)
                    samples = sample_picture(eval_model, fixed_z, classes, device, density)
                    export_best(paths, eval_model, config, classes, row, criterion, protocol, samples, density)

            # a large model's state is hundreds of MB: runs may write it less often (checkpoint_every), and an
            # epoch that ends while the previous write is still going leaves its state to the next epoch's end
            # rather than hold training up for the disk; the last epoch always writes
            checkpoint_due = checkpoint_due or epoch % config.output.checkpoint_every == 0
            if epoch == config.train.epochs or (checkpoint_due and not writer.busy):
                with clock("checkpoints"):  # the snapshot (and, at the end, waiting for the previous write)
                    save_checkpoint(
                        writer, paths, config_yaml, epoch, model, optimizer, scaler, shuffle, criterion, best_epoch, best_value, classes, ema, adversary,
                        pictures,
                    )
                checkpoint_due, pictures = False, []
            if on_epoch is not None:
                writer.wait()  # a sweep's scheduler may end this process inside the callback: the state is on disk first
                tracker.flush()
                on_epoch(row, improved)
        with clock("checkpoints"):
            writer.wait()
    except BaseException:
        # the write in flight still completes; the error already on its way is the one to report, but a
        # failed write means last.pt is an epoch older than the log says, and that must not go unsaid
        write_error = writer.join()
        if write_error is not None:
            warnings.warn(f"the checkpoint write in flight failed too, so {paths.last_checkpoint} is an earlier epoch's (or missing): {write_error}", stacklevel=2)
        raise
    finally:
        if tracker is not None:
            tracker.close()
            try:
                draw_curves(paths.run_dir, title=paths.name)
            except OSError as exc:  # e.g. the disk filled up: the error that stopped training is the one to show
                warnings.warn(f"could not draw {paths.run_dir / 'curves.png'}: {exc}", stacklevel=2)
    if main_process:
        say(f"time: {clock.summary()}")
    return TrainResult(paths, config.train.epochs - start_epoch, criterion, best_epoch, best_value, last_samples)


def save_checkpoint(
    writer: BackgroundWriter,
    paths: RunPaths, config_yaml: str, epoch: int, model, optimizer, scaler, shuffle: torch.Generator,
    criterion: str, best_epoch: int | None, best_value: float | None, classes: list[str],
    ema: EMA | None = None, adversary: Adversary | None = None, pictures: Sequence[tuple[Path, Image.Image]] = (),
) -> None:
    """checkpoints/last.pt: everything `--resume` needs to continue exactly, snapshotted now and written by `writer`;
    then `pictures` (path, PIL image), drawn at evaluations up to this epoch."""
    state = host_copy(
        {
            **({"ema": ema.state_dict()} if ema is not None else {}),
            **({"adversary": adversary.state_dict()} if adversary is not None else {}),
            "format": 1,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(shuffle),
            "best_criterion": criterion,
            "best_epoch": best_epoch,
            "best_value": best_value,
            "classes": classes,
        }
    )

    pictures = tuple(pictures)  # a snapshot, like the state: the caller's list may change while the write runs

    def write() -> None:
        save_training_state(paths.last_checkpoint, state)
        write_text_atomic(paths.last_checkpoint.parent / "config.yaml", config_yaml)
        # only now: a kill or Ctrl+C before this point must not leave pictures of epochs last.pt does not hold
        for path, picture in pictures:
            save_png(picture, path)

    writer.submit(write)


def fit_density(model, data: DecodedImages, config: Config, device: torch.device) -> LatentGMM | None:
    """`sampler.name: gmm`: the latent mixture, fitted on the training split's posterior means."""
    if config.sampler.name != "gmm":
        return None
    return fit_model_density(model, data, config.sampler, config.train.seed, eval_batch_size(config.eval.batch_size, device), device)


def export_best(
    paths: RunPaths,
    model,
    config: Config,
    classes: list[str],
    row: dict,
    criterion: str,
    protocol: dict | None,
    samples,
    density: LatentGMM | None = None,
) -> None:
    """best_models/<run>/, written together (checkpoint.written_together): every file is written before any replaces
    the previous best's, so an export stopped by a full disk, a kill or Ctrl+C leaves the previous best whole, and
    never weights beside another epoch's samples, mixture or metrics. `samples` is the run's sample picture (PIL,
    from `sample_picture`)."""
    import json

    metadata = {
        "vaegen_version": vaegen.__version__,
        "model": config.model.name,
        "image_size": list(config.data.image_size),
        "channels": config.data.channels,
        "classes": classes,
        "epoch": row["epoch"],
        criterion: row[criterion],
    }
    metrics = {
        "epoch": row["epoch"],
        "criterion": criterion,
        "value": row[criterion],
        "mode": "min",
        "classes": classes,
        "run_dir": str(paths.run_dir),
        "metrics": {key: value for key, value in row.items() if key != "epoch"},
    }
    if protocol is not None:
        metrics["protocol"] = protocol
    with written_together():
        save_model(paths.best_dir / "model.safetensors", model, metadata)
        if density is not None:
            density.save(paths.best_dir / SAMPLER_FILE, {"epoch": row["epoch"], "components": config.sampler.components, "fitted_on": "train posterior means"})
        else:  # a run resumed with another sampler must not leave the old mixture beside new weights
            discard(paths.best_dir / SAMPLER_FILE)
        write_text_atomic(paths.best_dir / "config.yaml", config.to_yaml())
        save_png(samples, paths.best_dir / "samples.png")
        write_text_atomic(paths.best_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def _check_same_data(state: dict, classes: list[str], paths: RunPaths) -> None:
    if state.get("classes") != classes:
        raise CheckpointError(
            f"{paths.last_checkpoint} was trained on classes {state.get('classes')} but data.root now has {classes}. "
            f"Resume with the data the run started with, or start a new run."
        )

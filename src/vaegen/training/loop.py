"""Training, top to bottom, for every model family: setup (the data, a `Run` holding the training state, the
evaluation), then the epochs: `train_one_epoch` (the step in plain sight), validation, every eval.every epochs
the samples and their scores, the best model to best_models/<run>/ when the selection metric improves, and
last.pt (written in the background; pictures only after the checkpoint that holds their epoch). Resume
restores every RNG stream, so an interrupted run ends with the uninterrupted run's weights."""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

import vaegen
from vaegen.checkpoint import (
    BackgroundWriter, StorageError, discard, file_in_the_way, host_copy, load_training_state, make_output_folder,
    save_model, save_training_state, write_text_atomic, written_together,
)
from vaegen.config import Config, evaluation_network_problem
from vaegen.data.dataset import (
    DecodedImages, Splits, batches, default_cache_dir, load_splits, steps_per_epoch, to_device, to_input,
)
from vaegen.errors import (
    ConfigError, NonFiniteSamples, OutOfMemory, TrainingDiverged, pixel_size, plural,
)
from vaegen.evaluation.backbones import resolve_backbone_name, second_opinions
from vaegen.evaluation.class_fidelity import conditional_fidelity, label_agreement, load_or_train_classifier
from vaegen.evaluation.frechet import Evaluator, eval_batch_size, metric_names, run_evaluator, score_model
from vaegen.evaluation.reconstruction import reconstruction_quality
from vaegen.evaluation.validation import validation_terms
from vaegen.models import Family, count_parameters, family_of, reconstructs, resolved_and_checked
from vaegen.plots import class_blocks, for_viewing, image_grid, reconstruction_grid, samples_per_class, save_png
from vaegen.samplers.draw import generated_samples, per_class_samples
from vaegen.samplers.mixture import SAMPLER_FILE, LatentGMM, check_mixture_data, fit_model_density
from vaegen.sharing import model_card
from vaegen.training import distributed
from vaegen.training.accel import CapturedStep, apply_backend_flags, autocast, resolve_device, resolve_step_options
from vaegen.training.adversarial import Adversary
from vaegen.training.log import kept_in, log
from vaegen.training.run import Run, build_optimizer, build_run, seed_everything  # noqa: F401  (build_optimizer: scripts use it from here)
from vaegen.training.runs import RunPaths, owned
from vaegen.training.tracking import Tracker, draw_curves


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
# One step, one epoch of training, one pass of validation


def train_step(
    run: Run, x: torch.Tensor, y: torch.Tensor | None, beta: float | torch.Tensor, adversary: Adversary | None = None
) -> torch.Tensor:
    """One optimizer step on batch x in [0, 1]; returns the family's terms and a skipped flag, stacked, on the device.
    Never synced with the host, unless optim.skip_grad_norm is set: then the update is dropped (skipped = 1)
    when the gradient norm is above it or not finite. With an `adversary` (the run's, after its warm-up) the model
    also learns to fool it, and it takes its own step; a perceptual term adds a frozen network's feature distance."""
    config, options = run.config, run.options
    if options.cuda_graphs:  # a new step: the graphs' outputs of the previous one may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    with autocast(options, run.device):
        outputs = run.step_model(x, y)
    terms = run.family.training_terms(outputs, x, beta, config.loss)
    objective = terms["loss"]
    fake = run.family.images(outputs) if run.perceptual is not None or adversary is not None else None
    if run.perceptual is not None:
        objective = objective + run.perceptual(fake, x)
    if adversary is not None:
        objective = objective + adversary.generator_term(fake, terms["recon"], run.model.last_layer)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(objective).backward()  # the scaler is a no-op unless precision is fp16
    skipped = False
    if config.optim.grad_clip is not None or config.optim.skip_grad_norm is not None:
        run.scaler.unscale_(run.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.optim.grad_clip or math.inf)
        if config.optim.skip_grad_norm is not None:
            norm = float(norm)
            skipped = not norm <= config.optim.skip_grad_norm  # NaN compares False: skipped too
    if not skipped:
        run.scaler.step(run.optimizer)
    run.scaler.update()  # fp16: when skipped, the scale still follows the unscaled gradients' inf checks
    if not skipped and run.ema is not None:
        run.ema.update(run.model)
    if adversary is not None:
        adversary.discriminator_step(x, fake)
    skipped_flag = torch.zeros_like(objective.detach())  # filled in place: a host-made tensor would sync on CUDA
    if skipped:
        skipped_flag.fill_(1.0)
    return torch.stack([*(term.detach() for term in terms.values()), skipped_flag])


def game_step(run: Run, x: torch.Tensor, y: torch.Tensor | None, step: int) -> torch.Tensor:
    """One batch of a two-player family (a GAN): the critic's update on it, then, every family.critic_steps-th batch,
    the generator's. Returns the critic's terms and a skipped flag (always 0), stacked, on the device."""
    family = run.family
    critic, generator = family.players(run.model)
    with autocast(run.options, run.device):
        terms = family.critic_terms(run.model, x, y)
    update_player(run, critic, terms["loss"])
    if step % family.critic_steps == 0:
        critic.requires_grad_(False)  # the generator's loss must not train the critic
        with autocast(run.options, run.device):
            objective = family.generator_objective(run.model, x, y)
        critic.requires_grad_(True)
        update_player(run, generator, objective)
        if run.ema is not None:
            run.ema.update(run.model)
    return torch.stack([*(term.detach() for term in terms.values()), torch.zeros_like(terms["loss"].detach())])


def update_player(run: Run, player: torch.nn.Module, objective: torch.Tensor) -> None:
    """One optimizer step on `player`'s weights: the run's one optimizer holds both players', and steps only those
    with a gradient, which the other player's frozen or detached weights do not get."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(objective).backward()
    distributed.average_gradients(player.parameters())
    if run.config.optim.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(player.parameters(), run.config.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()


def train_one_epoch(run: Run, data: DecodedImages, beta: float, epoch: int) -> dict[str, float]:
    """One pass over the training split, each batch through `train_step` (or its CUDA-graph replay; a two-player
    family's through `game_step`)."""
    config, device = run.config, run.device
    adversary = run.adversary if run.adversary is not None and epoch >= config.adversarial.start_epoch else None
    run.model.train()
    total_steps = steps_per_epoch(len(data.images), config.train.batch_size)
    names = run.family.terms
    # Sums stay on the device and are read only every log_every steps: no per-step sync.
    sums = torch.zeros(len(names) + 1, device=device)  # the terms (per-image sums), skipped updates
    first_bad_step = torch.tensor(-1, device=device)
    seen, start = 0, time.perf_counter()
    progress = tqdm(total=total_steps, desc=f"epoch {epoch}/{config.train.epochs}", unit="batch", leave=False, disable=None)
    for step, (images_u8, labels) in enumerate(batches(data, config.train.batch_size, generator=run.shuffle, hflip=config.data.hflip), 1):
        images_u8, labels = distributed.shard(images_u8, labels)  # under torchrun: this process's share
        x = to_input(images_u8, device, run.options.channels_last)
        y = labels.to(device) if run.model.is_conditional else None
        if run.captured is not None:
            terms = run.captured(x, y, beta)
        elif run.family.two_player:
            terms = game_step(run, x, y, step)
        else:
            terms = train_step(run, x, y, beta, adversary)
        sums[:-1] += terms[:-1] * len(x)
        sums[-1] += terms[-1]
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
    totals = distributed.all_reduce_sum(torch.cat([sums[:-1], torch.tensor([float(seen)], device=device)]))
    means = (totals[:-1] / totals[-1]).tolist()
    elapsed = time.perf_counter() - start
    adversarial = adversary.epoch_stats() if adversary is not None else {}
    # every process saw the same (all-reduced) gradients, so each skipped the same steps: no reduction
    skipped = {"skipped_steps": int(sums[-1])} if config.optim.skip_grad_norm is not None else {}
    return {**{f"train_{name}": value for name, value in zip(names, means)}, **adversarial, **skipped,
            "images_per_s": float(totals[-1]) / elapsed}


@torch.no_grad()
def epoch_line(row: dict, epochs: int, family: Family) -> str:
    """What the console shows of an epoch's metrics row: the family's headline terms, the evaluation's distances."""

    def terms(split: str, headline: dict[str, str]) -> str:
        shown = ", ".join(f"{label} {row[f'{split}_{name}']:.2f}" for name, label in headline.items() if f"{split}_{name}" in row)
        return f"  {split} {row[f'{split}_loss']:.2f}" + (f" ({shown})" if shown else "")

    validation = terms("val", family.val_headline) if "val_loss" in row else ""
    beta = f"  β {row['beta']:.3g}" if family.weighs_beta else ""
    return (
        f"epoch {row['epoch']:>3}/{epochs}{beta}{terms('train', family.headline)}{validation}  "
        f"{row['images_per_s']:.0f} img/s" + "".join(f"  {key} {value:.4g}" for key, value in row.items() if shown_on_the_epoch_line(key))
    )


def shown_on_the_epoch_line(key: str) -> bool:
    """The evaluation's headline numbers: each network's distances, and how often samples show their class."""
    return key == "cond_fidelity" or (key.startswith(("fd_", "fid_", "kd_", "kid_")) and not key.endswith("_std"))


# ---------------------------------------------------------------------------------------
# Divergence: whatever becomes NaN or infinite stops the run before it is logged, selected or saved


def _diverged(config: Config, epoch: int, beta: float, what: str) -> TrainingDiverged:
    """The run stops before it saves anything of `epoch`, in which `what` happened ("the loss became NaN ...")."""
    clip = f"optim.grad_clip (now {config.optim.grad_clip})" if config.optim.grad_clip else "optim.grad_clip: 1.0"
    fixes = f"Likely fixes: a lower optim.lr, a lower beta.max, or set {clip}"
    if epoch == 1:  # a resumed run starts at epoch 2 or later: here nothing has been saved yet
        diagnosis = f"{what} (lr {config.optim.lr:g}, β {beta:g}), before anything was saved. {fixes}"
        return TrainingDiverged(diagnosis, "then start the run again")
    diagnosis = (
        f"{what} (lr {config.optim.lr:g}, β {beta:g}). Nothing from this epoch was saved: the last checkpoint and the "
        f"best model are intact. {fixes}"
    )
    return TrainingDiverged(diagnosis, resumable=True)


def check_state_is_finite(run: Run, epoch: int, beta: float) -> None:
    """A finite loss can still leave non-finite weights (the last update) or moments: never checkpoint those.
    Every process holds the same state, so all of them stop here together."""
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), **({"ema": run.ema.state_dict()} if run.ema else {})}
    broken = first_nonfinite_tensor(state)
    if broken is not None:
        raise _diverged(run.config, epoch, beta, f"the weights became NaN or infinite in epoch {epoch} ({broken})")


def wait_for_the_verdict() -> None:
    """Processes other than 0: stop with process 0's divergence error if its validation or evaluation found one."""
    stop = distributed.broadcast(None)
    if stop is not None:
        raise TrainingDiverged(*stop)


@contextlib.contextmanager
def verdict_for_the_others():
    """Under torchrun, process 0 alone validates and evaluates: a divergence it finds there stops every process
    with its words (they would otherwise wait in the next epoch's gradient all-reduce for a process that is gone)."""
    try:
        yield
    except TrainingDiverged as exc:
        distributed.broadcast((exc.diagnosis, exc.then, exc.resumable))
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
# Evaluation: the samples, their pictures and scores


@dataclass
class Evaluation:
    """What scores a run's samples, set up once: FID/KID's networks and real features, the class-fidelity classifier
    (conditional models), the class frequencies samples are drawn with, and the fixed codes of the sample grids."""

    evaluator: Evaluator | None
    classifier: torch.nn.Module | None
    class_weights: torch.Tensor
    fixed_z: torch.Tensor  # the same latent vectors every evaluation, so sample grids show progress rather than noise


@dataclass
class Outputs:
    """Where a run writes and says what it does: the console and train.log, the trackers, the checkpoint writer,
    what has been drawn but not yet written (pictures go after the checkpoint that holds their epoch), and the
    clock that tells where the time went."""

    paths: RunPaths
    clock: PhaseClock = field(default_factory=PhaseClock)
    tracker: Tracker | None = None
    writer: BackgroundWriter = field(default_factory=BackgroundWriter)
    pictures: list[tuple[Path, Image.Image]] = field(default_factory=list)
    last_samples: Path | None = None
    epoch_samples: tuple[int, Image.Image] | None = None  # the last evaluation's sample picture: an export reuses it
    config_yaml: str = ""
    checkpoint_due: bool = False  # an epoch's state waits for the disk to be free (see save_when_due)
    history: list[dict] = field(default_factory=list)  # the epoch rows logged since this process started


@torch.no_grad()
def sample_picture(model, fixed_z: torch.Tensor, classes: list[str], device: torch.device, density: LatentGMM | None = None):
    """The run's sample picture (PIL, enlarged by plots.view_scale), the same draws at every evaluation so
    epochs compare: from the prior a latent model decodes `fixed_z`, from a mixture the same seeded draws; a model
    without a decoder generates from a fixed seed. Conditional models: one labelled block per class,
    samples_per_class(len(fixed_z)) in each; from the prior every block decodes the same first codes of `fixed_z`."""
    model.eval()
    if not reconstructs(model):
        return _generated_picture(model, len(fixed_z), classes)
    if not model.is_conditional:
        z = fixed_z if density is None else density.to(device).sample(len(fixed_z), torch.Generator().manual_seed(0))
        images = model.decode(z.to(device), None)
        return for_viewing(image_grid(images), images)
    per_class = samples_per_class(len(fixed_z), model.num_classes)
    images = per_class_samples(model, per_class, seed=0, density=density, prior_codes=fixed_z[:per_class])
    return class_blocks(images, classes)


def _generated_picture(model, count: int, classes: list[str]):
    """`model.generate`'s samples from seed 0, in a block per class for conditional models."""
    images = generated_samples(model, count, seed=0)
    return class_blocks(images, classes) if model.is_conditional else for_viewing(image_grid(images), images)


@torch.no_grad()
def reconstruction_picture(model, data: DecodedImages, count: int, device: torch.device):
    """The first `count` images of `data` above their reconstructions (PIL, enlarged by plots.view_scale)."""
    model.eval()
    x = to_input(data.images[:count], device)
    y = data.labels[:count].to(device) if model.is_conditional else None
    return for_viewing(reconstruction_grid(x, model.reconstruct(x, y)), x)


def fit_density(model, data: DecodedImages, config: Config, device: torch.device) -> LatentGMM | None:
    """`sampler.name: gmm`: the latent mixture, fitted on the training split's posterior means."""
    if config.sampler.name != "gmm":
        return None
    return fit_model_density(model, data, config.sampler, config.train.seed, eval_batch_size(config.eval.batch_size, device), device)


def evaluate_samples(run: Run, evaluation: Evaluation, splits: Splits, epoch: int, out: Outputs) -> tuple[dict, dict | None, LatentGMM | None]:
    """An evaluation epoch: the latent mixture (sampler gmm), the sample and reconstruction pictures (kept for the
    next checkpoint write), FID/KID and class fidelity. Returns (scores, protocol, mixture)."""
    config, model, device = run.config, run.eval_model, run.device
    model.eval()
    density = fit_density(model, splits.train, config, device)
    out.last_samples = out.paths.run_dir / f"samples_epoch{epoch:04d}.png"
    samples = sample_picture(model, evaluation.fixed_z, run.classes, device, density)
    out.epoch_samples = (epoch, samples)
    out.pictures.append((out.last_samples, samples))
    out.tracker.log_image("samples", samples, epoch)
    scores, protocol = {}, None
    if reconstructs(model):
        shown = splits.val if len(splits.val.images) else splits.train  # data.val_fraction: 0 has no validation images
        reconstructions = reconstruction_picture(model, shown, min(32, config.eval.num_grid), device)
        out.pictures.append((out.paths.run_dir / f"recon_epoch{epoch:04d}.png", reconstructions))
        out.tracker.log_image("reconstructions", reconstructions, epoch)
        quality = reconstruction_quality(model, splits.val, eval_batch_size(config.eval.batch_size, device), device)
        scores = {f"val_{name}": value for name, value in quality.items()}
    if evaluation.evaluator is not None:
        scores |= score_model(evaluation.evaluator, model, config.eval.temperature, evaluation.class_weights, density, run.family.has_prior)
        protocol = scores.pop("protocol")
    if evaluation.classifier is not None:
        scores.update(conditional_fidelity(evaluation.classifier, model, run.classes, 100, config.train.seed, config.eval.temperature, density))
        if len(splits.val.images):  # the ceiling: how well it tells real validation images apart
            scores["classifier_val_accuracy"] = label_agreement(evaluation.classifier, splits.val.images, splits.val.labels)
    return scores, protocol, density


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
    first = distributed.launched_first()
    owner = owned(paths, new=not resume) if first else contextlib.nullcontext()
    try:
        with owner:
            with kept_in(paths.run_dir / "train.log" if first else None, echo=echo and first):
                return _train(config, paths, resume, on_epoch)
    except BaseException as exc:
        raise _in_words(exc, paths) from exc


def _in_words(exc: BaseException, paths: RunPaths) -> BaseException:
    """The error to report for `exc`: the run folder named, and torch's errors a user can fix said as such."""
    if isinstance(exc, TrainingDiverged) and exc.resumable:  # raised deep in the loop, which does not know the folder
        return TrainingDiverged(exc.diagnosis, f"then continue with `vaegen train --resume {paths.run_dir} --set optim.lr=...`")
    if isinstance(exc, ValueError) and "Expected more than 1 value per channel" in str(exc):
        return ConfigError(
            f"a training batch of one image reaches a 1×1 feature map, where BatchNorm has nothing to normalise "
            f"over ({str(exc).splitlines()[0][:120]}). Train on batches of at least 2 images: train.batch_size ≥ 2 "
            f"(per process under torchrun) and at least 2 training images, or a larger data.image_size or fewer "
            f"model.widths."
        )
    host_memory = isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    if not (isinstance(exc, torch.cuda.OutOfMemoryError) or host_memory):
        return exc
    return OutOfMemory(
        f"training ran out of {'GPU' if isinstance(exc, torch.cuda.OutOfMemoryError) else 'host'} memory "
        f"({str(exc).splitlines()[0][:160]}). Lower train.batch_size, data.image_size, model.widths or "
        f"model.latent_dim; checkpoints written before this are intact (continue with --resume)."
    )


def _train(config: Config, paths: RunPaths, resume: bool, on_epoch: Callable[[dict, bool], None] | None) -> TrainResult:
    setup_started = time.perf_counter()
    config, _ = resolved_and_checked(config)  # the family's rules; a second stage takes its first stage's settings
    device, main_process = start_processes(config)
    prepare_output_folders(paths)
    out = Outputs(paths)
    clock = out.clock
    seed_everything(config.train.seed + distributed.rank())  # the batch order has its own generator, shared by all
    splits, run = build_data_and_run(config, device)
    evaluation = build_evaluation(run, splits, main_process)
    start_epoch = resume_from(run, paths) if resume else 0
    if main_process:
        out.config_yaml = config.to_yaml()
        write_text_atomic(paths.run_dir / "config.yaml", out.config_yaml)
        out.tracker = Tracker(paths.run_dir, config, paths.name, start_epoch)
    if run.options.step_graph:  # the step itself, recorded once and replayed (the config refused what it cannot hold)
        run.captured = CapturedStep(lambda x, y, beta: train_step(run, x, y, beta), device)
    clock.seconds["setup"] = time.perf_counter() - setup_started
    try:
        for epoch in range(start_epoch + 1, config.train.epochs + 1):
            run_epoch(run, evaluation, splits, epoch, out, on_epoch, steps=step_phase(run, first=epoch == start_epoch + 1))
        with clock("checkpoints"):
            out.writer.wait()
    except BaseException:
        # the write in flight still completes; the error already on its way is the one to report, but a
        # failed write means last.pt is an epoch older than the log says, and that must not go unsaid
        write_error = out.writer.join()
        if write_error is not None:
            warnings.warn(f"the checkpoint write in flight failed too, so {paths.last_checkpoint} is an earlier epoch's (or missing): {write_error}", stacklevel=2)
        raise
    finally:
        if out.tracker is not None:
            out.tracker.close()
            try:
                draw_curves(paths.run_dir, title=paths.name)
            except OSError as exc:  # e.g. the disk filled up: the error that stopped training is the one to show
                warnings.warn(f"could not draw {paths.run_dir / 'curves.png'}: {exc}", stacklevel=2)
    log.info(f"time: {clock.summary()}")
    return TrainResult(paths, config.train.epochs - start_epoch, run.criterion, run.best_epoch, run.best_value, out.last_samples)


def run_epoch(
    run: Run, evaluation: Evaluation, splits: Splits, epoch: int, out: Outputs, on_epoch: Callable[[dict, bool], None] | None, steps: str
) -> None:
    """One epoch: train (`steps`, the clock's name for it), check the state, then (process 0) validate, evaluate, log,
    export the best, checkpoint."""
    config, clock = run.config, out.clock
    beta = run.beta_at(epoch)
    with clock(steps):
        train_stats = train_one_epoch(run, splits.train, beta, epoch)
    run.epoch = epoch
    check_state_is_finite(run, epoch, beta)
    if not distributed.is_main():
        return wait_for_the_verdict()  # then on to the next epoch, whose first all-reduce waits for process 0
    with verdict_for_the_others():
        with clock("validation"):
            row = {"epoch": epoch, "beta": beta, "lr": run.optimizer.param_groups[0]["lr"], **train_stats,
                   **validation_terms(run.eval_model, run.family, splits.val, config, beta, run.device)}
        protocol, density = None, None
        if epoch % config.eval.every == 0 or epoch == config.train.epochs:
            with clock("evaluation"), _diverged_outputs_stop(config, epoch, beta):
                scores, protocol, density = evaluate_samples(run, evaluation, splits, epoch, out)
                row.update(scores)
        bad = nonfinite_value(row)
        if bad is not None:  # never logged, never selected as best, never checkpointed
            raise _diverged(config, epoch, beta, f"{bad} became {'NaN' if math.isnan(row[bad]) else 'infinite'} at epoch {epoch}")
    out.tracker.log_epoch(row)
    log.info(epoch_line(row, config.train.epochs, run.family))
    out.history.append(row)
    trouble = run.family.trouble(out.history)
    if trouble is not None:
        log.warning(f"epoch {epoch}: {trouble}.")
    improved = record_best(run, evaluation, splits, row, protocol, density, out)
    save_when_due(run, out)
    if on_epoch is not None:
        out.writer.wait()  # a sweep's scheduler may end this process inside the callback: the state is on disk first
        out.tracker.flush()
        on_epoch(row, improved)


def step_phase(run: Run, first: bool) -> str:
    """The clock's name for an epoch's steps: compilation and the step's capture happen in the `first` epoch this
    process trains, and their cost is shown apart from the steady state."""
    if first and (run.options.compile or run.options.step_graph):
        return "first epoch, compiling" if run.options.compile else "first epoch, capturing"
    return "training steps"


def record_best(run: Run, evaluation: Evaluation, splits: Splits, row: dict, protocol, density, out: Outputs) -> bool:
    """Whether this epoch improved the selection metric (which exists only in evaluation epochs, for FID); if so,
    export the model to best_models/<run>/."""
    value = row.get(run.criterion)
    if value is None or (run.best_value is not None and value >= run.best_value):  # ties keep the earlier epoch
        return False
    run.best_epoch, run.best_value = row["epoch"], value
    with out.clock("best-model exports"):
        model = run.eval_model
        if density is None:  # selecting on a validation loss can pick an epoch without an evaluation
            density = fit_density(model, splits.train, run.config, run.device)
        drawn = out.epoch_samples  # the same draws as this epoch's evaluation (a diffusion model's are slow to repeat)
        if drawn is None or drawn[0] != row["epoch"]:
            drawn = (row["epoch"], sample_picture(model, evaluation.fixed_z, run.classes, run.device, density))
        samples = drawn[1]
        export_best(out.paths, run, row, protocol, samples, density)
    return True


def save_when_due(run: Run, out: Outputs) -> None:
    """last.pt, every output.checkpoint_every epochs and at the last one. A large model's state is hundreds of MB:
    an epoch that ends while the previous write is still going leaves its state to the next epoch's end rather
    than hold training up for the disk."""
    config = run.config
    out.checkpoint_due = out.checkpoint_due or run.epoch % config.output.checkpoint_every == 0
    if run.epoch == config.train.epochs or (out.checkpoint_due and not out.writer.busy):
        with out.clock("checkpoints"):  # the snapshot (and, at the end, waiting for the previous write)
            save_checkpoint(run, out)
        out.checkpoint_due = False


# ---------------------------------------------------------------------------------------
# Setup


def start_processes(config: Config) -> tuple[torch.device, bool]:
    """This process's device, and whether it is process 0 (under torchrun only process 0 evaluates, logs and writes)."""
    distributed.init(config.train.device)
    device = distributed.device_for(resolve_device(config.train.device))
    distributed.check_batch(config.train.batch_size)
    if config.adversarial.enabled and distributed.world_size() > 1:
        raise ConfigError("adversarial.enabled is not supported under torchrun yet; train the VAE-GAN in one process.")
    if config.train.cuda_graph and distributed.world_size() > 1:
        raise ConfigError("train.cuda_graph is not supported under torchrun yet; set train.cuda_graph: false, or train in one process.")
    refuse_training_against_the_scorer(config)
    return device, distributed.is_main()


def refuse_training_against_the_scorer(config: Config) -> None:
    """A perceptual loss on the network that computes the reported distances games the metric: refused before any
    network loads, `auto` once it resolves (the evaluation's build warns about that resolution, not this look)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = config.eval.backbone if config.eval.backbone == "none" else resolve_backbone_name(config.eval.backbone, config.eval.inception_weights)
    problem = evaluation_network_problem(config.loss.perceptual, scorer, second_opinions(scorer, config.eval.extra_backbones))
    if problem:
        raise ConfigError(problem + ".")


def prepare_output_folders(paths: RunPaths) -> None:
    """Both output folders are checked before any training: a best model that cannot be written must not surface
    only after the first epoch, with no checkpoint to resume from."""
    make_output_folder(paths.best_dir.parent, "output.best_dir")
    if file_in_the_way(paths.best_dir) is not None:  # the run's own folder is made only when it has a model to hold
        raise StorageError(f"{paths.best_dir} is a file, where the run's best model folder goes; move it, or set output.best_dir or output.run_name.")
    make_output_folder(paths.run_dir, "output.logs_dir")


def build_data_and_run(config: Config, device: torch.device) -> tuple[Splits, Run]:
    """The data (decoded once, cached, split deterministically), placed as the step options say, and the Run."""
    splits = load_splits(config.data, config.train.seed)
    classes, data = splits.train.classes, config.data
    where = f"{data.title} in {data.root}" if data.source == "torchvision" else data.root
    log.info(
        f"data: {where} — {len(splits.train.images)} train / {len(splits.val.images)} val images, "
        f"{len(classes)} class(es) {classes}, {pixel_size(*config.data.image_size)}, {plural(config.data.channels, 'channel')}"
    )
    # how the step uses the hardware (precision, layout, compile, data placement)
    options = resolve_step_options(config.train, config.data, device, splits.train.images.nbytes + splits.val.images.nbytes)
    if family_of(config.model).two_player:  # its players step apart: there is no one step to compile or capture
        options = replace(options, compile=False, compile_mode="default", cuda_graphs=False, step_graph=False)
    apply_backend_flags(options)
    if options.on_device:
        splits = to_device(splits, device)
    run = build_run(config, device, options, classes)
    run.split_sizes = (len(splits.train.images), len(splits.val.images))
    if config.adversarial.enabled and not hasattr(run.model, "last_layer"):  # where the adversarial weight is measured
        raise ConfigError(f"adversarial.enabled needs the model's image-making layer (last_layer), which "
                          f"{config.model.name} does not name; turn adversarial.enabled off for this model.")
    if config.sampler.name == "gmm":  # found now, not at the first evaluation
        check_mixture_data(splits.train.labels, classes, run.model.is_conditional)
    conditioning = "unconditional" if config.model.conditional == "none" else f"{config.model.conditional} conditioning"
    log.info(f"model: {config.model.name} ({conditioning}), {count_parameters(run.model):,} parameters, on {device} ({options.describe()})")
    return splits, run


def build_evaluation(run: Run, splits: Splits, main_process: bool) -> Evaluation:
    """FID/KID's networks and real features (cached on disk), the class-fidelity classifier, and the selection
    criterion, set up once."""
    config = run.config
    evaluator = run_evaluator(config, splits, run.device) if main_process else None
    classifier = None  # conditional models: a classifier trained once on the real images checks that samples show their class
    if run.model.is_conditional and len(run.classes) > 1 and main_process:
        classifier = load_or_train_classifier(splits.train, len(run.classes), config.data.cache_dir or default_cache_dir(), run.device, config.train.seed)
    run.criterion = config.output.select
    if config.output.select == "fid" and evaluator is not None:
        run.criterion = metric_names(evaluator.backbone.name)[0]
    if evaluator is not None:
        log.info(
            f"evaluation every {config.eval.every} epoch(s): {', '.join(n for b in evaluator.networks for n in metric_names(b))} of "
            f"{config.eval.num_samples} samples against {len(evaluator.real)} real {config.eval.reference} images "
            f"({' and '.join(evaluator.networks)} features); best checkpoint by {run.criterion}"
        )
    class_weights = torch.bincount(splits.train.labels, minlength=len(run.classes)).float()
    # a latent family's module sizes its codes (hvae derives them from its grids); model.latent_dim otherwise
    latent_dim = run.model.latent_dim if reconstructs(run.model) else config.model.latent_dim
    fixed_z = torch.randn(config.eval.num_grid, latent_dim, generator=torch.Generator().manual_seed(config.train.seed + 2))
    return Evaluation(evaluator, classifier, class_weights, fixed_z)


def resume_from(run: Run, paths: RunPaths) -> int:
    """Put last.pt back into `run`; returns the epoch it holds."""
    run.load_state_dict(load_training_state(paths.last_checkpoint), str(paths.last_checkpoint))
    best = f"best {run.criterion} {run.best_value:.4g} at epoch {run.best_epoch}" if run.best_value is not None else f"no best {run.criterion} yet"
    log.info(f"resumed {paths.run_dir} at epoch {run.epoch} ({best})")
    done = nothing_left(paths.run_dir, run.epoch, run.config.train.epochs)
    if done:
        log.info(done)
    return run.epoch


def nothing_left(run_dir: Path, epoch: int, epochs: int) -> str | None:
    """What resuming a run that already has all its epochs says; None while epochs remain."""
    if epoch >= epochs:
        return f"nothing to do: {run_dir} already has {epoch} of train.epochs={epochs}; raise it with --set train.epochs=N"
    return None


# ---------------------------------------------------------------------------------------
# Writing: last.pt and the best model


def save_checkpoint(run: Run, out: Outputs) -> None:
    """checkpoints/last.pt: everything `--resume` needs to continue exactly, snapshotted now and written on the
    background writer; then the pictures drawn at evaluations up to this epoch."""
    state = host_copy(run.state_dict())
    pictures, paths, config_yaml = tuple(out.pictures), out.paths, out.config_yaml  # a snapshot, like the state
    out.pictures.clear()

    def write() -> None:
        save_training_state(paths.last_checkpoint, state)
        write_text_atomic(paths.last_checkpoint.parent / "config.yaml", config_yaml)
        # only now: a kill or Ctrl+C before this point must not leave pictures of epochs last.pt does not hold
        for path, picture in pictures:
            save_png(picture, path)

    out.writer.submit(write)


def export_best(paths: RunPaths, run: Run, row: dict, protocol: dict | None, samples, density: LatentGMM | None = None) -> None:
    """best_models/<run>/ for the run's evaluated model at `row`'s epoch, written together (checkpoint.written_together):
    every file is written before any replaces the previous best's, so an export stopped by a full disk, a kill or
    Ctrl+C leaves the previous best whole, and never weights beside another epoch's samples, mixture or metrics.
    `samples` is the run's sample picture (PIL, from `sample_picture`); README.md is its model card (vaegen.sharing)."""
    model, config, classes, criterion = run.eval_model, run.config, run.classes, run.criterion
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
        card = model_card(paths.name, config, metrics, run.family.name, count_parameters(model), getattr(model, "latent_dim", None))
        write_text_atomic(paths.best_dir / "README.md", card)

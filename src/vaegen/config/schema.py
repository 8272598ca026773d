"""The config's sections: pydantic models that forbid unknown keys; each field's description is its line in
docs/config.md (scripts/config_reference.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler,
    field_validator, model_validator,
)
from pydantic_core import PydanticCustomError

from vaegen.config.messages import allowed, did_you_mean, either, items_of, mentions, takes_only_mappings

# the longest folder or file name, in bytes, that Linux, macOS and Windows file systems hold
NAME_MAX = 255
# a seed goes to torch, numpy and scikit-learn (the latent mixture); the last two take 0 to 2**32 - 1
SEED_MAX = 2**32 - 1
# model.name's choices: the built-in models, and every name vaegen.models.register_model adds
MODEL_NAMES = {"conv_vae", "res_vae", "gru_vae", "conv_ae", "res_ae", "conv_vqvae", "vq_prior", "hvae", "ddpm", "dcgan", "realnvp"}
NETWORK_NAMES = ("inception", "inception-64", "efficientnet-lite0", "dinov2")
BACKBONE_NAMES = ("auto", *NETWORK_NAMES, "none")
DEVICE = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N"
BATCH_HELP = "images per decoder/backbone batch; auto = 1000 on CUDA, 64 elsewhere"
WEIGHTS_HELP = "weights-inception-2015-12-05-6726825d.pth, if not in the torch cache"
NEAREST_K = 5
NEAREST_K_HELP = ("the k of the k-nearest-neighbour balls behind precision, recall, density and coverage (Naeem et al. "
                  "use 5); lowered to fewer than the images on either side when needed")
IS_SPLITS_HELP = "splits of the samples whose Inception Scores give its mean ± std (10, as published)"
# data.source torchvision: the datasets read, each with its own splits as torchvision names them (the first is the default)
TORCHVISION_SPLITS = {
    "MNIST": ("train", "test"), "FashionMNIST": ("train", "test"), "KMNIST": ("train", "test"),
    "CIFAR10": ("train", "test"), "CIFAR100": ("train", "test"), "SVHN": ("train", "test", "extra"),
    "CelebA": ("train", "valid", "test", "all"),
}
ARRAY_SUFFIXES = (".npy", ".npz")


class Section(BaseModel):
    # inf and nan are valid YAML floats (.inf, .nan) but no setting means them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_is_defaults(cls, raw: Any) -> Any:
        # YAML reads `train:` with nothing under it as null; it means the section's defaults, at any depth
        if not isinstance(raw, dict):
            return raw
        fields = cls.model_fields
        return {key: {} if value is None and key in fields and takes_only_mappings(fields[key].annotation) else value
                for key, value in raw.items()}

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_or_empty_path(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 (YAML reads yes, no, on, off as true, false) and '' as the current folder
        field = cls.model_fields[info.field_name]
        if isinstance(value, (str, Path)) and mentions(field.annotation, Path):
            if not str(value).strip():
                default = "" if field.is_required() else ", or leave it out for the default"
                raise ValueError(f"an empty string is no path; give a path{default}")
            check_path_names(Path(value))
        for position, item in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
            takes = field.annotation if position is None else items_of(field.annotation)
            if isinstance(item, bool) and not mentions(takes, bool) and allowed(takes):
                raise _yes_no(item, allowed(takes), position)
        return value


def check_path_names(path: Path) -> None:
    # no file system holds such a name: every use of the path fails (OSError, or ValueError for a NUL)
    if "\0" in str(path):
        raise ValueError("a path cannot hold the NUL character (\\0)")
    for name in path.parts:
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise ValueError(f"the name {name[:20]}... in it is {size} bytes long; "
                             f"file systems hold names of at most {NAME_MAX} bytes")


def _yes_no(value: bool, allowed: str, position: int | None = None) -> PydanticCustomError:
    item = "" if position is None else f"item {position + 1} "
    return PydanticCustomError("yes_no", "{item}is {value}, a yes/no value, where {allowed} is expected",
                               {"item": item, "value": str(value).lower(), "allowed": allowed})


def _refuse_first(rules: list[tuple[Any, str | None]]) -> None:
    """Raise the message of the first rule whose condition holds."""
    for broken, message in rules:
        if broken:
            raise ValueError(message)


class DataConfig(Section):
    """The training images and how they are read."""

    root: Path = Field(description="ImageFolder (one subfolder per class) or a flat folder of images; with "
                                   "data.source torchvision the folder the dataset is downloaded into, with array a "
                                   ".npy or .npz file")
    source: Literal["folder", "torchvision", "array"] = Field(
        "folder", description="what data.root holds: image files, a torchvision dataset (data.dataset), or a numpy "
                              "array of images (N×H×W, N×H×W×C or N×C×H×W, C = 1 or 3; uint8, or floats in [0, 1])")
    dataset: Literal[tuple(TORCHVISION_SPLITS)] | None = Field(
        None, description="source torchvision only: the dataset, any case (its classes; CelebA is one class, CelebA)")
    split: Literal["train", "test", "extra", "valid", "all"] | None = Field(
        None, description="source torchvision only: the dataset's own part to read; null = train; SVHN also has "
                          "extra, CelebA valid and all (data.val_fraction still holds out part of it)")
    download: bool = Field(True, description="source torchvision only: download missing files into data.root "
                                             "(false: never use the network)")
    labels: Path | None = Field(
        None, description="source array with a .npy only: a .npy of one whole-number label per image, classes named "
                          "class_<label>; an .npz holds its own (arrays images or x, labels or y, and class names in "
                          "classes); null = one class, named after the file")
    limit: PositiveInt | None = Field(None, description="at most this many images per class, the first in the "
                                                        "source's order (files by name), before the split; null = all")
    image_size: tuple[PositiveInt, PositiveInt] = Field(
        (64, 64), description="one number (square) or [height, width], in pixels; each divisible by 2 to the number of "
                              "times the model halves it (2**len(model.widths) for most models)"
    )
    channels: Literal[1, 3] = Field(3, description="3 for RGB, 1 for grayscale")
    resize: Literal["center_crop", "stretch"] = Field("center_crop", description="stretch ignores the aspect ratio")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of each class held out for validation")
    hflip: bool = Field(False, description="flip training images left-right at random")
    skip_bad: bool = Field(False, description="leave out unreadable images (with a warning) instead of stopping")
    cache_dir: Path | None = Field(None, description="decoded images; default: $VAEGEN_CACHE or ~/.cache/vaegen")
    on_device: Literal["auto"] | bool = Field("auto", description="keep the decoded uint8 images on the accelerator; "
                                                                  "auto = when they fit in half its free memory")

    @field_validator("image_size", mode="wrap")
    @classmethod
    def _square_or_height_width(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> tuple[int, int]:
        # one number is a square; pydantic's words for other shapes ("a valid tuple") say nothing of image sizes
        try:
            return handler((value, value) if isinstance(value, int) and not isinstance(value, bool) else value)
        except ValidationError as exc:  # empty values, keys under it and yes/no items have their own sentences
            if value is None or isinstance(value, dict) or any(error["type"] == "yes_no" for error in exc.errors()):
                raise
        channels = "; the channel count goes in data.channels" * (isinstance(value, list) and len(value) == 3)
        raise ValueError("an image size is one whole number of pixels for square images (e.g. 64) or "
                         f"[height, width] (e.g. [64, 48]), each at least 1{channels}")

    @property
    def title(self) -> str:
        """The data's name in summaries: its folder's or file's, or the torchvision dataset's and split's."""
        return f"{self.dataset} {self.split or 'train'}" if self.source == "torchvision" else self.root.name

    @field_validator("dataset", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        # torchvision spells them MNIST, CIFAR10, CelebA; `mnist` or `cifar10` means the same dataset
        names = {name.lower(): name for name in TORCHVISION_SPLITS}
        return names.get(value.lower(), value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _keys_fit_the_source(self) -> DataConfig:
        _refuse_first(self._source_rules())
        return self

    def _source_rules(self) -> list[tuple[bool, str]]:
        """Each key read by one source is refused under another; each source's own keys must fit together."""
        source, dataset, split, labels = self.source, self.dataset, self.split, self.labels
        owners = {"dataset": "torchvision", "split": "torchvision", "download": "torchvision", "labels": "array"}
        # a dumped config holds every key, so a key counts as set when it differs from its default
        foreign = next((key for key, owner in owners.items()
                        if owner != source and getattr(self, key) != DataConfig.model_fields[key].default), None)
        owner, splits, suffix = owners.get(foreign), TORCHVISION_SPLITS.get(dataset, ("train",)), self.root.suffix.lower()
        return [
            (foreign is not None, f"data.{foreign} is set, but data.source is {source} and only data.source {owner} "
             f"reads it; remove data.{foreign}, or set data.source: {owner}"),
            (source == "torchvision" and dataset is None, "data.source torchvision needs data.dataset, the dataset "
             f"to read: {either(list(TORCHVISION_SPLITS))} (e.g. data.dataset: MNIST)"),
            (split is not None and dataset is not None and split not in splits, f"data.split {split} is no split of "
             f"{dataset}, which has {either(list(splits))}; set one of those, or remove data.split for train"),
            (source == "array" and suffix not in ARRAY_SUFFIXES, f"data.source array reads a .npy or .npz file, but "
             f"data.root is {self.root}; point data.root at one, or set data.source: folder for a folder of images"),
            (labels is not None and suffix == ".npz", "data.labels goes with a .npy data.root; an .npz holds its "
             "labels itself, as an array named labels (or y): remove data.labels"),
            (labels is not None and labels.suffix.lower() != ".npy", f"data.labels {labels} is not a .npy file; save "
             "the labels with numpy.save (one whole number per image) and point data.labels at that file"),
        ]


class ModelConfig(Section):
    """The network."""

    name: str = Field("conv_vae", description="a registered model, and with it its family: conv_vae, res_vae and gru_vae (VAEs; "
                                               "gru_vae's encoder a GRU over rows), "
                                               "hvae (hierarchical VAE), conv_ae and res_ae (autoencoders), conv_vqvae "
                                               "(VQ-VAE; both sampled through sampler.name: gmm), vq_prior (a learned "
                                               "prior over a trained conv_vqvae's codes, model.first_stage), dcgan "
                                               "(a GAN; model.gan_loss), realnvp (a normalizing flow, exact likelihood), "
                                               "ddpm (a diffusion model: DDPM/DDIM over a U-Net)")
    latent_dim: int = Field(128, ge=1, description="size of the latent code")
    widths: tuple[int, ...] = Field((64, 128, 256, 512), min_length=1,
                                    description="encoder channels per stride-2 layer; the decoder mirrors them")
    conditional: Literal["none", "onehot", "embedding"] = Field(
        "none", description="class conditioning: one-hot label planes into the encoder, or a learned vector added to z")
    rnn_hidden: int = Field(256, ge=1, description="gru_vae only: units per direction of the bidirectional GRU that "
                                                    "reads the image's rows")
    rnn_layers: int = Field(1, ge=1, description="gru_vae only: stacked GRU layers")
    blocks: int = Field(2, ge=1, description="res_vae and hvae only: residual blocks after each change of "
                                             "resolution (hvae: in the encoder and at each top-down resolution)")
    codebook_size: int = Field(512, ge=2, description="conv_vqvae only: the number of codes in the codebook")
    code_dim: int = Field(64, ge=1, description="conv_vqvae only: channels of each code (the grid replaces latent_dim)")
    commitment_weight: float = Field(0.25, ge=0.0, description="conv_vqvae only: weight of the commitment term")
    dead_code_threshold: float = Field(
        2.0, ge=0.0, description="conv_vqvae only: a code whose EMA use falls below this is restarted from the batch; 0 = never")
    first_stage: Path | None = Field(
        None, description="vq_prior only: the trained conv_vqvae whose codes the prior learns, its best-model folder "
                          "(best_models/<run>); its architecture and conditioning are copied into this model's keys")
    prior_layers: int = Field(4, ge=1, description="vq_prior only: transformer layers of the prior over the code grid")
    prior_width: int = Field(128, ge=8, description="vq_prior only: the prior's channels per position")
    prior_heads: int = Field(4, ge=1, description="vq_prior only: attention heads (must divide model.prior_width)")
    top_k: PositiveInt | None = Field(None, description="vq_prior only: draw each code from its k most likely; null = all")
    prior_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="vq_prior only: dropout on the prior's embeddings, "
                                                                  "attention and residual branches while it trains")
    levels: int = Field(2, ge=2, description="hvae only: latent levels, one per resolution from the coarsest (the encoder's "
                                             "last stage) upwards, at most len(model.widths); KL warm-up is beta.schedule: "
                                             "warmup, and optim.skip_grad_norm skips the rare exploding step (VDVAE)")
    latent_channels: int = Field(16, ge=1, description="hvae only: channels of each level's latent grid (the grids, "
                                                       "flattened, replace latent_dim)")
    free_bits: float = Field(0.0, ge=0.0, description="hvae only: nats per level: a level's batch-mean KL below this "
                                                      "costs the loss this much and has no gradient (logged kl stays "
                                                      "the true KL); 0 = off")
    level_temperatures: tuple[NonNegativeFloat, ...] | None = Field(
        None, description="hvae only: each level's temperature (>= 0), top (coarsest) first, times the temperature "
                          "of every draw from the prior (FD/KID samples, vaegen test, vaegen.load's sample(), the "
                          "gallery's single-class grids); the training sample grids decode fixed codes at 1; null = all 1")
    gan_loss: Literal["non_saturating", "lsgan", "hinge", "wgan_gp"] = Field(
        "non_saturating", description="dcgan only: the two players' loss: non_saturating (DCGAN), lsgan (least squares), "
                                      "hinge, or wgan_gp (Wasserstein with gradient penalty; its critic has no BatchNorm)")
    critic_steps: int = Field(1, ge=1, description="dcgan only: discriminator updates per generator update (WGAN-GP: 5)")
    gradient_penalty: float = Field(10.0, gt=0.0, description="dcgan with gan_loss wgan_gp only: λ, the weight of the "
                                                               "critic's gradient penalty")
    spectral_norm: bool = Field(False, description="dcgan only: spectral normalisation of the discriminator's layers "
                                                   "(in place of its BatchNorm)")
    collapse_patience: int = Field(3, ge=1, description="dcgan only: epochs a sign of failure (the discriminator's loss "
                                                        "near 0, or samples far less varied than the data) must last "
                                                        "before the log names it")
    flow_scales: int = Field(3, ge=1, description="realnvp only: scales of the multiscale flow; each but the last "
                                                   "halves the resolution, so data.image_size must divide by "
                                                   "2**(flow_scales - 1)")
    flow_couplings: int = Field(3, ge=1, description="realnvp only: affine couplings per stage (checkerboard ones, then "
                                                      "channel-wise ones after the squeeze; the last scale has one more "
                                                      "checkerboard coupling and no squeeze)")
    flow_width: int = Field(64, ge=1, description="realnvp only: channels of each coupling's ResNet")
    flow_blocks: int = Field(2, ge=1, description="realnvp only: residual blocks of each coupling's ResNet")
    timesteps: int = Field(1000, ge=2, description="ddpm only: diffusion steps T the model is trained on (Ho et al. "
                                                   "2020: 1000); DDPM sampling runs all of them")
    noise_schedule: Literal["linear", "cosine"] = Field(
        "linear", description="ddpm only: the noise levels: linear β (Ho et al. 2020, from 1e-4 to 0.02 at 1000 steps, "
                              "scaled by 1000/T) or cosine ᾱ (Nichol & Dhariwal 2021: less noise at middle steps)")
    prediction: Literal["epsilon", "v"] = Field(
        "epsilon", description="ddpm only: what the U-Net predicts: the noise ε, or v = α·ε − σ·x0 (Salimans & Ho 2022)")
    layers_per_block: int = Field(2, ge=1, description="ddpm only: residual blocks of the U-Net at each resolution "
                                                        "(model.widths, one resolution each)")
    attention: bool = Field(True, description="ddpm only: self-attention at the U-Net's lowest resolution (and in its "
                                              "middle); false = convolutions only")
    diffusion_sampler: Literal["ddpm", "ddim"] = Field(
        "ddim", description="ddpm only: ancestral DDPM sampling over all model.timesteps steps, or DDIM (Song et al. "
                            "2021) over model.sample_steps; vaegen test can change it (test model.*)")
    sample_steps: int = Field(50, ge=1, description="ddpm only: DDIM steps per sample, at most model.timesteps; vaegen "
                                                     "test can change it (test model.*)")
    ddim_eta: float = Field(0.0, ge=0.0, le=1.0, description="ddpm only: DDIM's η, the share of DDPM's noise each step "
                                                             "draws afresh: 0 = deterministic (Song et al.'s DDIM), 1 = "
                                                             "as much as an ancestral step; vaegen test can change it "
                                                             "(test model.*)")
    guidance: float = Field(1.0, ge=0.0, description="ddpm only, conditional models: classifier-free guidance scale s, "
                                                     "output = unconditional + s·(class − unconditional) (Ho & Salimans "
                                                     "2022); 1 = none; vaegen test can change it (test model.*)")
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="ddpm only, conditional models: chance a training "
                                                                  "image's class is replaced by the null class, which "
                                                                  "guidance (model.guidance) needs")

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if min(value) < 1:
            raise ValueError("every width must be a positive channel count")
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _registered(cls, value: Any) -> Any:
        # before Section's yes/no check, so that `name: yes` is answered with the registered models too
        names = sorted(MODEL_NAMES)
        if isinstance(value, bool):
            raise _yes_no(value, f"the name of a registered model ({either(names)})")
        if value is not None and value not in names:  # None (`name:` with nothing after it) is an empty value
            close = did_you_mean(str(value), names)
            raise ValueError(f"unknown model; registered models: {', '.join(names)}" + (f" ({close})" if close else ""))
        return value


class LossConfig(Section):
    """The reconstruction term and an optional perceptual term; `beta` weights the KL term."""

    # gaussian: σ-VAE, a Gaussian likelihood whose σ is set optimally per batch (calibrated decoder)
    recon: Literal["mse", "bce", "gaussian"] = Field("mse", description="summed over pixels; gaussian = σ-VAE")
    perceptual: Literal["none", "efficientnet-lite0", "inception"] = Field(
        "none", description="add a feature distance on this frozen ImageNet network; never the eval.backbone")
    perceptual_weight: float = Field(1.0, gt=0.0, description="factor on the perceptual term")


class BetaConfig(Section):
    """β, the weight of the family's regulariser (a VAE's KL, an autoencoder's ½‖z‖²), per epoch: constant, warmup
    (β·min(1, epoch/warmup)), or cyclic (warmup each cycle)."""

    schedule: Literal["constant", "warmup", "cyclic"] = Field("constant", description="how β moves over the epochs")
    max: float = Field(1.0, ge=0.0, description="β once warmed up")
    warmup: int = Field(10, ge=1, description="epochs to ramp from 0 to max")
    cycle: int = Field(20, ge=1, description="cyclic schedule period in epochs")

    @model_validator(mode="after")
    def _warmup_fits_cycle(self) -> BetaConfig:
        if self.schedule == "cyclic" and self.warmup > self.cycle:
            raise ValueError(f"beta.warmup ({self.warmup}) must be at most beta.cycle ({self.cycle}) for the cyclic "
                             "schedule, or beta never reaches beta.max")
        return self


class OptimConfig(Section):
    """The optimizer."""

    name: Literal["adam", "adamw"] = Field("adam", description="adamw decouples the weight decay")
    lr: float = Field(2e-4, gt=0.0, description="learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's decay rates, each in [0, 1)")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay (adam: L2 in the gradient); 0 = off")
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; null = off")
    # Child 2021 (VDVAE): a rare batch with a huge gradient can undo hours of training; one host sync per step
    skip_grad_norm: float | None = Field(None, gt=0.0, description="skip the update when the gradient norm is "
                                                                   "above this or not finite; null = off")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Adam's betas are decay rates, each in [0, 1) (the default is [0.9, 0.999]); "
                             f"got {list(betas)}")
        return betas


class TrainConfig(Section):
    """The training loop and its speed settings."""

    epochs: int = Field(100, ge=1, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="images per step; under torchrun the global batch")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="0 to 2**32 - 1, the seeds numpy and scikit-learn take")
    device: str = Field("auto", pattern=DEVICE, description=DEVICE_HELP)
    log_every: int = Field(20, ge=1, description="steps between progress-bar loss updates (the only host syncs)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on CUDA, else fp32")
    channels_last: Literal["auto"] | bool = Field("auto", description="auto = on for CUDA, and on CPU up to 32x32 px")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the training step; auto = on for CUDA")
    cudnn_benchmark: Literal["auto"] | bool = Field(
        "auto", description="let cuDNN time its algorithms for each new shape and keep the fastest; auto = on for CUDA")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode; reduce-overhead replays the compiled step as CUDA graphs")
    cuda_graph: bool = Field(False, description="capture the whole step (forward, loss, backward, optimizer) as one "
                                                "CUDA graph and replay it; CUDA only")
    sync_batchnorm: bool = Field(False, description="under torchrun: BatchNorm statistics over the global batch")
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="decay of a moving average of the weights, which "
                                                                 "evaluation and export use (e.g. 0.999); null = off")

    @model_validator(mode="after")
    def _compile_settings_agree(self) -> TrainConfig:
        mode = self.compile_mode
        _refuse_first([
            (self.compile is False and mode != "default", f"train.compile_mode is {mode} but train.compile is false, "
             "so nothing is compiled; set train.compile to auto or true, or remove train.compile_mode"),
            (self.cuda_graph and mode in ("reduce-overhead", "max-autotune"), "train.cuda_graph captures the whole "
             f"step as one CUDA graph, and train.compile_mode {mode} captures the compiled part again inside it; use "
             "one: remove train.compile_mode, or set train.cuda_graph: false"),
        ])
        return self


class SamplerConfig(Section):
    """Where generated images' latent codes come from."""

    # gmm: Ghosh et al. 2020; FID is then reported for it and for the prior
    name: Literal["prior", "gmm"] = Field("prior", description="gmm = a Gaussian mixture fitted on the training "
                                                               "images' posterior means at every evaluation")
    components: int = Field(10, ge=1, description="mixture components (per class for conditional models)")
    covariance: Literal["full", "diag"] = Field("full", description="each mixture component's covariance")


class AdversarialConfig(Section):
    """VAE-GAN refinement: a patch discriminator trained from scratch; its term is weighted adaptively."""

    enabled: bool = Field(False, description="add the adversarial term")
    loss: Literal["hinge", "non_saturating"] = Field("hinge", description="the GAN loss of both players")
    start_epoch: int = Field(5, ge=1, description="first epoch with the adversarial term (the decoder learns alone)")
    weight: float = Field(0.5, gt=0.0, description="factor on the adaptive weight (gradient-norm ratio at the decoder)")
    lr: float = Field(2e-4, gt=0.0, description="the discriminator's Adam learning rate")
    widths: tuple[int, ...] = Field((64, 128, 256), min_length=1, description="channels per stride-2 layer")


class EvalConfig(Section):
    """Evaluation during training: sample grids and FID/KID."""

    every: int = Field(5, ge=1, description="epochs between evaluations (grids, FID/KID)")
    num_grid: int = Field(64, ge=1, description="images in each grid")
    backbone: Literal[BACKBONE_NAMES] = Field("auto", description="feature network for FID/KID; auto = inception if "
                                                                  "its weights are here, else efficientnet-lite0")
    inception_weights: Path | None = Field(None, description=WEIGHTS_HELP)
    extra_backbones: tuple[Literal[NETWORK_NAMES], ...] = Field(
        (), description="also score the same samples on these networks (required with loss.perceptual)")
    num_samples: int = Field(5000, ge=2, description="generated images per FID/KID evaluation")
    reference: Literal["train", "val", "all"] = Field("train", description="real images the samples are compared with")
    batch_size: Literal["auto"] | PositiveInt = Field("auto", description=BATCH_HELP)
    kid_subset_size: int = Field(1000, ge=2, description="images per KID subset")
    nearest_k: int = Field(NEAREST_K, ge=1, description=NEAREST_K_HELP)
    is_splits: int = Field(10, ge=1, description=IS_SPLITS_HELP)
    temperature: float = Field(1.0, gt=0.0, description="prior temperature for FID samples")


class LoggingConfig(Section):
    """Experiment tracking besides TensorBoard."""

    wandb: Literal["disabled", "offline", "online"] = Field("disabled", description="Weights & Biases logging")
    wandb_project: str = Field("vaegen", description="the W&B project")


class OutputConfig(Section):
    """Where runs go and which epoch is the best."""

    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=NAME_MAX,
                                 description="the run's folder name; default: <config name>-<date>-<time>")
    logs_dir: Path = Field(Path("logs"), description="runs' folders: checkpoints, metrics, pictures")
    best_dir: Path = Field(Path("best_models"), description="each run's best model")
    # val_nelbo = recon + KL does not move with the β schedule, so a β = 0 epoch cannot win by dropping the KL
    select: Literal["fid", "val_nelbo", "val_recon", "val_loss"] = Field(
        "fid", description="picks the best epoch (lower is better): eval.backbone's FID, recon + KL, recon, recon+β·KL"
    )
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints/last.pt writes, more while the "
                                                       "previous write is still going (the last epoch always writes)")


class Config(Section):
    """`vaegen train`'s config."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    beta: BetaConfig = BetaConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sampler: SamplerConfig = SamplerConfig()
    adversarial: AdversarialConfig = AdversarialConfig()
    logging: LoggingConfig = LoggingConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        select, no_val = self.output.select, self.data.val_fraction == 0
        # "auto" is checked once resolved, in train
        network = evaluation_network_problem(self.loss.perceptual, self.eval.backbone, self.eval.extra_backbones)
        _refuse_first([  # the image size a model's layers halve is its family's rule (models.resolved_and_checked)
            (select.startswith("val_") and no_val, f"output.select is {select} but data.val_fraction is 0, so there is "
             "no validation split to select on; set data.val_fraction to e.g. 0.1"),
            (select == "fid" and self.eval.backbone == "none", "output.select is fid but eval.backbone is none, so no "
             "FID is measured; choose a backbone (auto, efficientnet-lite0, inception) or select on val_nelbo"),
            *_extras_rules(self.eval.backbone, self.eval.extra_backbones, "eval."),
            (network is not None, network),
            (self.eval.reference == "val" and no_val,
             "eval.reference is val but data.val_fraction is 0; use eval.reference: train or all"),
            self._host_in_replayed_step(),
        ])
        return self

    def _host_in_replayed_step(self) -> tuple[bool, str]:
        """A replayed CUDA graph repeats one step's device work: nothing in it may need the host."""
        host = [name for name, on in [
            ("train.precision fp16 (its loss scaler reads the gradients' inf checks on the host)",
             self.train.precision == "fp16"),
            ("optim.skip_grad_norm (reads the gradient norm on the host every step)",
             self.optim.skip_grad_norm is not None),
            ("train.ema (its decay changes with a step counter kept on the host)", self.train.ema is not None),
            ("adversarial.enabled (the discriminator joins the step at a later epoch)", self.adversarial.enabled),
        ] if on]
        many = len(host) > 1
        return (self.train.cuda_graph and bool(host), f"train.cuda_graph replays one recorded step, but "
                f"{'; and '.join(host)} {'need' if many else 'needs'} the host between steps; set "
                f"train.cuda_graph: false, or turn {'them' if many else 'it'} off")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class InterpolationConfig(Section):
    """interpolation.png: spherical latent interpolations between pairs of validation images."""

    rows: int = Field(6, ge=1, description="pairs of validation images")
    steps: int = Field(10, ge=2, description="images per row, both ends included")


class LikelihoodConfig(Section):
    """The test split's negative log-likelihood bounds (families with a likelihood: the VAE's, not the autoencoder's)."""

    samples: int = Field(64, ge=0, description="K, the importance samples per image of the IWAE bound (the ELBO uses "
                                               "the same draws); 0: no likelihood bounds")


class DiagnosticsConfig(Section):
    """Latent diagnostics of latent families: kl_per_dim.png, traversals.png, latent_map.png and metrics.json's counts."""

    enabled: bool = Field(True, description="draw them (and write active_units, latent_dim and the per-dimension KL)")
    traversal_dims: int = Field(8, ge=1, description="traversals.png: rows, the most used latent dimensions (by KL, or "
                                                     "by code variance without one)")
    traversal_steps: int = Field(9, ge=2, description="traversals.png: decoded values per row, from -3 to +3 standard "
                                                      "deviations around the first image's code")
    map_points: int = Field(2000, ge=2, description="latent_map.png: at most this many images' posterior means")
    tsne: bool = Field(True, description="latent_map.png: a t-SNE panel beside the PCA one (seconds per 1,000 points)")


class TestConfig(Section):
    """`vaegen test`: what to load, what to compare it with, what to draw."""

    __test__ = False  # not a pytest test class, despite the name

    checkpoint: Path | None = Field(None, description="best_models/<run> (or --checkpoint)")
    data_root: Path | None = Field(None, description="default: the data.root the model was trained on")
    cache_dir: Path | None = Field(None, description="decoded images; default: the training run's data.cache_dir")
    skip_bad: bool | None = Field(None, description="leave out unreadable images; default: the run's data.skip_bad")
    split: Literal["train", "val", "all"] = Field("val", description="the images scored and reconstructed")
    backbone: Literal[BACKBONE_NAMES] = Field("auto", description="feature network for FID/KID, as eval.backbone")
    inception_weights: Path | None = Field(None, description=WEIGHTS_HELP)
    extra_backbones: tuple[Literal[NETWORK_NAMES], ...] = Field((), description="also score the samples on these")
    num_samples: int = Field(5000, ge=2, description="generated images for FID/KID")
    batch_size: Literal["auto"] | PositiveInt = Field("auto", description=BATCH_HELP)
    kid_subset_size: int = Field(1000, ge=2, description="images per KID subset")
    nearest_k: int = Field(NEAREST_K, ge=1, description=NEAREST_K_HELP)
    is_splits: int = Field(10, ge=1, description=IS_SPLITS_HELP)
    grid: int = Field(8, ge=1, description="samples.png holds grid x grid samples (conditional models: about as many, "
                                           "one labelled block per class)")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seeds the samples; 0 to 2**32 - 1")
    temperature: float = Field(1.0, gt=0.0, description="prior temperature of the samples")
    sampler: Literal["auto", "prior", "gmm"] = Field("auto", description="auto = the checkpoint's latent mixture if "
                                                                         "it has one; gmm fits one now if it has none")
    model: dict[str, Any] = Field(
        default_factory=dict, description="model.* keys of the trained config to change for this test, only those that "
                                          "change how it samples, not its weights (its family's sampling keys, e.g. "
                                          "ddpm's diffusion_sampler, sample_steps, ddim_eta and guidance): --set "
                                          "model.sample_steps=250; {} = as trained")
    interpolation: InterpolationConfig = InterpolationConfig()
    likelihood: LikelihoodConfig = LikelihoodConfig()


    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    output_dir: Path | None = Field(None, description="default: <checkpoint>/test")
    device: str = Field("auto", pattern=DEVICE, description=DEVICE_HELP)

    @model_validator(mode="after")
    def _check(self) -> TestConfig:
        check_extra_backbones(self.backbone, self.extra_backbones)
        return self


def _extras_rules(backbone: str, extras: tuple[str, ...], prefix: str) -> list[tuple[bool, str]]:
    return [
        (bool(extras) and backbone == "none", f"{prefix}extra_backbones is set but {prefix}backbone is none, so "
         "nothing is scored; choose a backbone or drop the extras"),
        (len(set(extras)) != len(extras) or backbone in extras, f"{prefix}extra_backbones {list(extras)} repeats a "
         f"network ({prefix}backbone is {backbone}); list each once"),
    ]


def check_extra_backbones(backbone: str, extras: tuple[str, ...], prefix: str = "") -> None:
    """Refuse extra backbones beside no backbone, or that repeat a network."""
    _refuse_first(_extras_rules(backbone, extras, prefix))


def network_of(backbone: str) -> str:
    """The network behind a backbone name: the Inception layers are one network."""
    return "inception" if backbone.startswith("inception") else backbone


def evaluation_network_problem(perceptual: str, eval_backbone: str | None,
                               extra_backbones: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a perceptual loss on `perceptual` for a run these networks score; None when nothing is."""
    if perceptual == "none" or eval_backbone in (None, "none"):
        return None
    extras = [("eval.extra_backbones lists", extra) for extra in extra_backbones]
    for setting, backbone in [("eval.backbone resolves to", eval_backbone), *extras]:
        if backbone != "auto" and network_of(backbone) == network_of(perceptual):
            return (f"loss.perceptual uses {perceptual}, which is also the network that computes a reported Fréchet "
                    f"distance ({setting} {backbone}), so training against it improves the number, not the images; "
                    "use another perceptual network, or score on other networks, or loss.perceptual: none")
    if not extra_backbones:
        return (f"loss.perceptual uses {perceptual}, and a loss on one ImageNet network can move distances measured on "
                "another (their features overlap), so such a run is reported on a second network too: set "
                "eval.extra_backbones: [dinov2] (self-supervised, no ImageNet labels), or loss.perceptual: none")
    return None

"""The learned prior of a VQ-VAE (van den Oord et al. 2017, second stage): a small causal transformer over a trained
conv_vqvae's code grid, read in raster order, trained on the frozen first stage's codes of the training images.

`model.name: vq_prior` with `model.first_stage: best_models/<vqvae run>`: the run copies the first stage's
architecture into its own config (so its config.yaml rebuilds the whole model), loads its weights and never updates
them; the exported model holds both, so `vaegen.load` samples it alone: codes drawn one position at a time (with
temperature and top-k), then decoded by the first stage. Conditional first stages get a prior per class: the class is
the first token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaegen.checkpoint import load_model_weights, read_model_metadata
from vaegen.config import Config, ModelConfig, load_config
from vaegen.errors import ConfigError, VaegenError
from vaegen.models.family import Family, optimizer_words
from vaegen.models.registry import register_model
from vaegen.models.vae import ImageModule
from vaegen.models.vqvae import ConvVQVAE

# what the prior takes from its first stage: everything that shapes the codes and how they are decoded
FIRST_STAGE_KEYS = ("widths", "conditional", "codebook_size", "code_dim", "commitment_weight", "dead_code_threshold")


class VQPrior(Family):
    """A prior over a frozen VQ-VAE's codes: the objective is the codes' cross-entropy in nats per code (`loss`), also
    shown in bits per code. Outputs: (logits [N, positions, codebook size], the codes [N, positions])."""

    name = "vq_prior"
    terms = ("loss", "bits_per_code")
    headline = {"loss": "nats/code"}
    val_headline = {"loss": "nats/code"}
    weighs_beta = False
    temperature_means = "divides the prior's logits; 0: its most likely code at each position"

    def describe(self, config: Config) -> dict[str, str]:
        model = config.model
        return {"model": f"{model.name}, a transformer ({model.prior_layers} layers, width {model.prior_width}) over the "
                         f"{model.codebook_size} codes of {model.first_stage}, conditional {model.conditional}",
                "training": f"cross-entropy of the codes, {optimizer_words(config)}",
                "sampler": "the learned prior over codes" + (f", top {model.top_k}" if model.top_k else "")}

    def resolve(self, config: Config) -> Config:
        stage = first_stage_config(config)
        copied = {key: getattr(stage.model, key) for key in FIRST_STAGE_KEYS}
        return config.model_copy(update={"model": config.model.model_copy(update=copied)})

    def check(self, config: Config) -> None:
        model, select = config.model, config.output.select
        if model.prior_width % model.prior_heads:
            raise ConfigError(f"model.prior_heads {model.prior_heads} does not divide model.prior_width "
                              f"{model.prior_width}; each attention head takes an equal share of the channels.")
        if config.sampler.name != "prior":
            raise ConfigError(f"sampler.name is {config.sampler.name}, but a vq_prior is itself the prior of its first "
                              "stage's codes: its samples come from it; set sampler.name: prior.")
        if select not in ("fid", "val_loss"):
            raise ConfigError(f"output.select is {select}, which a vq_prior does not report (it has no reconstruction "
                              "or KL term); select on fid or val_loss (the codes' cross-entropy).")

    def prepare(self, module, config, classes):
        folder = config.model.first_stage
        trained_on = read_model_metadata(folder / "model.safetensors").get("classes")
        if module.is_conditional and trained_on != list(classes):
            raise ConfigError(f"model.first_stage {folder} is conditional on the classes {trained_on}, but data.root "
                              f"holds {list(classes)}; train the prior on the first stage's data.")
        load_model_weights(module.first_stage, folder / "model.safetensors")

    def training_terms(self, outputs, x, beta, loss):
        logits, codes = outputs
        nats = F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
        return {"loss": nats, "bits_per_code": nats / math.log(2)}


def first_stage_config(config: Config) -> Config:
    """The config of `model.first_stage`, refused (ConfigError) when it is missing, not a trained conv_vqvae, or made
    for other images."""
    folder = config.model.first_stage
    if folder is None:
        raise ConfigError("model.name vq_prior is the second stage of a VQ-VAE and needs the trained first stage: set "
                          "model.first_stage to the best-model folder of a conv_vqvae run (best_models/<run>); train "
                          "that one first with model.name: conv_vqvae.")
    if not (folder / "model.safetensors").is_file() or not (folder / "config.yaml").is_file():
        raise ConfigError(f"model.first_stage {folder} holds no trained model (model.safetensors and config.yaml, "
                          "what `vaegen train` exports to best_models/<run>); train the conv_vqvae first, or fix the path.")
    try:
        stage = load_config(folder / "config.yaml")
    except VaegenError as exc:
        raise ConfigError(f"model.first_stage {folder} has a config.yaml that no longer reads: {exc}") from None
    if stage.model.name != "conv_vqvae":
        raise ConfigError(f"model.first_stage {folder} is a {stage.model.name} model; a vq_prior learns the codes of a "
                          "conv_vqvae: point it at one.")
    ours, theirs = config.data, stage.data
    if (ours.image_size, ours.channels) != (theirs.image_size, theirs.channels):
        raise ConfigError(f"model.first_stage {folder} was trained on {list(theirs.image_size)} px images with "
                          f"{theirs.channels} channel(s), this config has {list(ours.image_size)} px and {ours.channels}; "
                          "set data.image_size and data.channels to the first stage's.")
    return stage


@register_model("vq_prior", family=VQPrior())
class CodePrior(ImageModule):
    """A frozen ConvVQVAE (`first_stage`) and a causal transformer (pre-norm blocks, learned positions) that
    predicts each code of its h x w grid from the ones before it in raster order, after a start token (the class's, for
    conditional models)."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__()
        self.first_stage = ConvVQVAE(cfg, image_size, channels, num_classes).requires_grad_(False).eval()
        self.conditional, self.num_classes, self.top_k = cfg.conditional, num_classes, cfg.top_k
        self.codebook_size = cfg.codebook_size
        self.positions = math.prod(self.first_stage.grid_shape[1:])
        width = cfg.prior_width
        self.token = nn.Embedding(cfg.codebook_size + (num_classes if self.is_conditional else 1), width)
        self.position = nn.Parameter(torch.randn(1, self.positions, width) * 0.02)
        self.dropout = nn.Dropout(cfg.prior_dropout)
        self.blocks = nn.ModuleList(CausalBlock(width, cfg.prior_heads, cfg.prior_dropout) for _ in range(cfg.prior_layers))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.codebook_size))

    @property
    def last_layer(self) -> torch.Tensor:
        return self.head[-1].weight

    def train(self, mode: bool = True) -> CodePrior:
        super().train(mode)
        self.first_stage.eval()  # frozen: its BatchNorm statistics and codebook EMA stay the first stage's
        return self

    def _start(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """The start tokens [n, 1]: after the codes, one per class (conditional) or a single one."""
        offset = labels if labels is not None else torch.zeros(n, dtype=torch.long, device=self.position.device)
        return (self.codebook_size + offset)[:, None]

    def _logits(self, tokens: torch.Tensor, start: int = 0, caches: list[dict] | None = None) -> torch.Tensor:
        """Next-code logits [N, t, codebook size] after each of the tokens [N, t] at positions start, start + 1, ...;
        `caches` (one dict per block) hold the keys and values of the positions before `start` when sampling."""
        hidden = self.dropout(self.token(tokens) + self.position[:, start:start + tokens.shape[1]])
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, None if caches is None else caches[index])
        return self.head(hidden)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """The logits of every code of x's grid given the ones before it, and those codes [N, positions]."""
        labels = self._check_labels(labels, x.shape[0], check_range=False)  # no host sync in the training step
        with torch.no_grad():
            codes = self.first_stage.quantize(self.first_stage._grid(x, labels).flatten(1))[1].flatten(1)
        tokens = torch.cat([self._start(labels, len(x)), codes[:, :-1]], dim=1)
        return self._logits(tokens), codes

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """`n` images: codes drawn position by position (logits / temperature, the `model.top_k` most likely; temperature
        0 takes the most likely), decoded by the first stage. Conditional: `labels`, else drawn with `class_weights`."""
        labels = self._drawn_labels(n, generator, class_weights, labels)
        labels = self._check_labels(labels, n)
        token, caches, codes = self._start(labels, n), [{} for _ in self.blocks], []
        for position in range(self.positions):
            logits = self._logits(token, position, caches)[:, -1].float()
            codes.append(token := self._draw(logits, generator, temperature)[:, None])
        codes = torch.cat(codes, dim=1)
        channels, height, width = self.first_stage.grid_shape
        grid = self.first_stage.quantizer.codebook[codes].view(n, height, width, channels).permute(0, 3, 1, 2)
        return torch.sigmoid(self.first_stage._decode_grid(grid.to(self.last_layer.dtype), labels))

    def _draw(self, logits: torch.Tensor, generator: torch.Generator, temperature: float) -> torch.Tensor:
        """One code per row of `logits`: the Gumbel-max trick, so the noise comes from the (CPU) generator whatever the
        device."""
        if self.top_k is not None and self.top_k < logits.shape[1]:
            kth = logits.topk(self.top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if temperature == 0:
            return logits.argmax(1)
        uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-20, 1.0).to(logits.device)
        return (logits / temperature - torch.log(-torch.log(uniform))).argmax(1)


class CausalBlock(nn.Module):
    """A pre-norm transformer block whose attention looks only backwards. Written here rather than taken from torch's
    TransformerEncoderLayer because sampling needs a key/value cache, which that layer lacks: without one each of the
    grid's positions recomputes all before it (33 s for 250 samples of an 8 x 8 grid on one CPU thread)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.attention_dropout = heads, dropout
        self.attention_norm, self.qkv, self.out = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x [N, t, width]. Training (`cache` None): each position attends to itself and those before it. Sampling: `cache`
        holds the earlier positions' keys and values, x the one position after them (which sees them all), and gains its own."""
        n, t, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(n, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        dropout = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=cache is None)
        x = x + self.residual_dropout(self.out(attended.transpose(1, 2).reshape(n, t, width)))
        return x + self.mlp(x)

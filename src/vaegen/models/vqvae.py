"""The VQ-VAE (van den Oord et al. 2017): ConvVAE's convolutional stages around a grid of discrete codes, quantised
by vector-quantize-pytorch's `VectorQuantize` (EMA codebook updates, dead codes restarted from the batch).

It has no prior of its own: its samples come from the latent mixture (sampler.name: gmm) fitted on the encoder's
continuous outputs, the code grid before quantisation, flattened; `decode` snaps such a grid to the nearest codes
and decodes those, so every sample the decoder sees is made of codebook entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from vaegen.config import Config, ModelConfig
from vaegen.errors import ConfigError
from vaegen.models.family import Family, require_the_mixture_sampler
from vaegen.models.losses import reconstruction_loss
from vaegen.models.registry import register_model
from vaegen.models.vae import ImageModule, _down, _up


def code_statistics(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity of the codes' frequencies in `indices` (any shape), and the fraction of the codebook they use;
    on the device, no host sync."""
    counts = torch.zeros(codebook_size, device=indices.device).scatter_add_(
        0, indices.reshape(-1), torch.ones(indices.numel(), device=indices.device))
    probs = counts / indices.numel()
    perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
    return perplexity, (counts > 0).float().mean()


class VQVAE(Family):
    """Vector-quantised autoencoders: reconstruction + the commitment term (codebook.commitment_weight ·
    ‖z_e - sg[z_q]‖², the codebook itself follows its EMA). β plays no part. Outputs: (decoder logits, commitment
    term, code indices [N, h, w], codebook size). They have no prior: samples come from the latent mixture (sampler.name: gmm)."""

    name = "vqvae"
    terms = ("loss", "recon", "commit", "perplexity", "codebook_usage")
    headline = {"recon": "recon", "commit": "commit", "perplexity": "perplexity"}
    val_headline = {"recon": "recon"}
    has_prior = False
    weighs_beta = False

    def describe(self, config: Config) -> dict[str, str]:
        model = config.model
        return {**super().describe(config), "model": f"{model.name}, {model.codebook_size} codes of {model.code_dim} "
                f"dimensions, widths {list(model.widths)}, conditional {model.conditional}"}

    def check(self, config: Config) -> None:
        require_the_mixture_sampler(config, "a VQ-VAE", "the training images' codes before quantisation, snapped to "
                                    "the codebook when decoded")
        if config.output.select == "val_nelbo":
            raise ConfigError(
                f"output.select is val_nelbo, but model.name {config.model.name} is a VQ-VAE: it has no KL term and no "
                f"likelihood bound, so no epoch would ever be selected; select on val_recon, val_loss or fid."
            )

    def training_terms(self, outputs, x, beta, loss):
        logits, commit, indices, codebook_size = outputs
        recon = reconstruction_loss(logits.float(), x, loss.recon)
        commit = commit.float().reshape(())
        perplexity, usage = code_statistics(indices, codebook_size)
        return {"loss": recon + commit, "recon": recon, "commit": commit, "perplexity": perplexity, "codebook_usage": usage}

    def images(self, outputs):
        return torch.sigmoid(outputs[0].float())

    @torch.no_grad()
    def validation_terms(self, model, x, y, generator, beta, loss):
        outputs = model(x, y)
        terms = self.training_terms(outputs, x, beta, loss)
        squared_error = (torch.sigmoid(outputs[0].float()) - x).pow(2).sum() / len(x)
        return {**terms, "mse": squared_error}


@register_model("conv_vqvae", family=VQVAE())
class ConvVQVAE(ImageModule):
    """Images in [0, 1], [N, C, H, W] -> ConvVAE's stride-2 stages -> a 1x1 convolution to `model.code_dim` channels on
    an (H / 2**L) x (W / 2**L) grid -> each position snapped to one of `model.codebook_size` codes -> a 1x1 convolution
    and ConvVAE's transposed stages back to logits. `latent_dim` is the flattened grid (code_dim · h · w).

    Conditioning: "onehot" adds the label's one-hot planes to the encoder's input and to the decoder's code grid;
    "embedding" adds a learned per-class vector to every position of the quantised grid."""

    def __init__(self, cfg: ModelConfig, image_size: tuple[int, int], channels: int, num_classes: int = 1):
        super().__init__()
        self.image_size, self.channels, self.num_classes = tuple(image_size), channels, num_classes
        self.conditional, self.codebook_size = cfg.conditional, cfg.codebook_size
        widths = list(cfg.widths)
        factor = 2 ** len(widths)
        height, width = self.image_size
        if height % factor or width % factor:
            raise ValueError(f"image size {self.image_size} is not divisible by {factor}")
        self.grid_shape = (cfg.code_dim, height // factor, width // factor)
        self.latent_dim = cfg.code_dim * (height // factor) * (width // factor)

        label_planes = num_classes if cfg.conditional == "onehot" else 0
        in_widths = [channels + label_planes] + widths[:-1]
        stages = [_down(i, o, norm=index > 0) for index, (i, o) in enumerate(zip(in_widths, widths))]
        self.encoder = nn.Sequential(*stages, nn.Conv2d(widths[-1], cfg.code_dim, 1))
        self.quantizer = VectorQuantize(
            dim=cfg.code_dim, codebook_size=cfg.codebook_size, commitment_weight=cfg.commitment_weight,
            threshold_ema_dead_code=cfg.dead_code_threshold, accept_image_fmap=True,
        )
        self.label_embedding = nn.Embedding(num_classes, cfg.code_dim) if cfg.conditional == "embedding" else None
        reversed_widths = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.code_dim + label_planes, widths[-1], 1, bias=False), nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True),
            *(_up(i, o) for i, o in zip(reversed_widths[:-1], reversed_widths[1:])),
            nn.ConvTranspose2d(widths[0], channels, 4, stride=2, padding=1),
        )

    def _planes(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        planes = F.one_hot(labels, self.num_classes).to(like.dtype)[:, :, None, None]
        return planes.expand(-1, -1, *like.shape[2:])

    def _grid(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The encoder's continuous code grid [N, code_dim, h, w], before quantisation."""
        if self.conditional == "onehot":
            x = torch.cat([x, self._planes(labels, x)], dim=1)
        return self.encoder(x)

    def _decode_grid(self, quantized: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Logits from a quantised grid [N, code_dim, h, w]."""
        if self.conditional == "onehot":
            quantized = torch.cat([quantized, self._planes(labels, quantized)], dim=1)
        elif self.conditional == "embedding":
            quantized = quantized + self.label_embedding(labels)[:, :, None, None]
        return self.decoder(quantized)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Decoder logits, the commitment term, the code indices [N, h, w] and the codebook size."""
        labels = self._check_labels(labels, x.shape[0], check_range=False)  # no host sync in the training step
        quantized, indices, commit = self.quantizer(self._grid(x, labels))
        return self._decode_grid(quantized, labels), commit, indices, self.codebook_size

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """The code grid before quantisation, flattened [N, latent_dim], and no spread: (z, None)."""
        return self._grid(x, self._check_labels(labels, x.shape[0])).flatten(1), None

    def codes(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The code indices [N, h, w] of images x."""
        return self.quantize(self.encode(x, labels)[0])[1]

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened continuous grids [N, latent_dim] -> their nearest codes [N, code_dim, h, w] and indices [N, h, w]."""
        codebook = self.quantizer.codebook.float()  # [codebook_size, code_dim]
        vectors = z.float().reshape(z.shape[0], *self.grid_shape).permute(0, 2, 3, 1)  # [N, h, w, code_dim]
        indices = torch.cdist(vectors.flatten(0, 2), codebook).argmin(-1).view(vectors.shape[:3])
        return codebook[indices].permute(0, 3, 1, 2).to(self.last_layer.dtype), indices

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._decode_grid(self.quantize(z)[0], self._check_labels(labels, z.shape[0]))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from flattened continuous grids [N, latent_dim], each position snapped to its nearest code."""
        return torch.sigmoid(self.decode_logits(z, labels))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, labels)[0], labels)

    def generate(self, n: int, generator: torch.Generator, temperature: float = 1.0, class_weights: torch.Tensor | None = None):
        raise ValueError("a VQ-VAE has no prior over its codes: its samples come from the latent mixture fitted on the "
                         "training images' codes, which vaegen.load's sample() uses (sampler.name: gmm); or decode codes")

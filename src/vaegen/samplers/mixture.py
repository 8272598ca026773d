"""Ex-post latent density (Ghosh et al. 2020, "From Variational to Deterministic Autoencoders").

A trained VAE's aggregate posterior rarely fills N(0, I): the prior puts mass where the decoder
never saw a code, and those samples come out as blurry hybrids. Fitting a Gaussian mixture to the
posterior means of the training images, after training, and sampling codes from it instead keeps
generation where the decoder is good. Conditional models get one mixture per class.

The mixture is fitted with scikit-learn's EM and stored as plain tensors (safetensors + JSON
metadata, no pickle); sampling is a few torch ops on the model's device with the caller's generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vaegen.checkpoint import atomic_write
from vaegen.config import SamplerConfig
from vaegen.data.dataset import to_input
from vaegen.errors import CheckpointError, DataError, NonFiniteSamples, check_finite_outputs, plural

SAMPLER_FILE = "sampler.safetensors"


@dataclass(frozen=True)
class LatentGMM:
    """G mixtures (1, or one per class) of K Gaussians over D-dimensional codes."""

    weights: torch.Tensor  # [G, K], rows sum to 1 (padding components have weight 0)
    means: torch.Tensor  # [G, K, D]
    scale_tril: torch.Tensor  # [G, K, D, D], lower Cholesky factors of the covariances
    covariance: str  # full | diag, as fitted

    @property
    def groups(self) -> int:
        return self.weights.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.means.shape[-1]

    def to(self, device: torch.device | str) -> LatentGMM:
        return LatentGMM(self.weights.to(device), self.means.to(device), self.scale_tril.to(device), self.covariance)

    def sample(
        self, n: int, generator: torch.Generator, labels: torch.Tensor | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """[n, D] codes. `labels` picks each code's class mixture; temperature scales the spread around
        each component's mean. Randomness comes from `generator` (a CPU generator) only."""
        groups = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long().cpu().reshape(-1)
        if groups.numel() == 1 and n > 1:
            groups = groups.expand(n)
        if self.groups == 1:
            groups = torch.zeros_like(groups)
        components = torch.multinomial(self.weights.cpu()[groups], 1, generator=generator).squeeze(1)
        noise = torch.randn(n, self.latent_dim, generator=generator) * temperature
        device = self.means.device
        groups, components, noise = groups.to(device), components.to(device), noise.to(device)
        # each code's own Cholesky factor, gathered a chunk at a time: [n, D, D] at once is 33 GB for 2,000 codes of 2,048
        chunk = max(1, 2**24 // self.latent_dim**2)
        spread = [(self.scale_tril[g, c] @ e.unsqueeze(-1)).squeeze(-1)
                  for g, c, e in zip(groups.split(chunk), components.split(chunk), noise.split(chunk))]
        return self.means[groups, components] + torch.cat(spread)

    def save(self, path: Path, metadata: dict[str, object]) -> None:
        tensors = {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}
        tensors = {name: tensor.detach().float().cpu().contiguous() for name, tensor in tensors.items()}
        meta = {"kind": "gmm", "covariance": self.covariance, **metadata}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()}))

    @classmethod
    def load(cls, path: Path) -> LatentGMM:
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a readable latent sampler ({type(exc).__name__}: {exc}). Delete it to sample from the "
                f"prior, or re-export the model (vaegen train writes it with sampler.name: gmm)."
            ) from exc
        missing = {"weights", "means", "scale_tril"} - set(tensors)
        if meta.get("kind") != "gmm" or missing:
            raise CheckpointError(f"{path} is not a vaegen Gaussian-mixture sampler (kind {meta.get('kind')!r}, missing {sorted(missing)}).")
        return cls(tensors["weights"], tensors["means"], tensors["scale_tril"], meta.get("covariance", "full"))


def latent_codes(
    n: int, latent_dim: int, generator: torch.Generator, labels: torch.Tensor | None = None,
    temperature: float = 1.0, density: LatentGMM | None = None,
) -> torch.Tensor:
    """[n, latent_dim] codes to decode: from `density` (per `labels`) when given, else z ~ N(0, temperature² I)."""
    if density is not None:
        return density.sample(n, generator, labels, temperature)
    return torch.randn(n, latent_dim, generator=generator) * temperature


def fit_latent_gmm(
    codes: torch.Tensor,
    labels: torch.Tensor | None,
    num_groups: int,
    components: int,
    covariance: str,
    seed: int,
) -> LatentGMM:
    """EM fit of `components` Gaussians per group on `codes` [N, D] (posterior means)."""
    from sklearn.mixture import GaussianMixture

    codes = codes.detach().double().cpu()
    dim = codes.shape[1]
    weights = torch.zeros(num_groups, components, dtype=torch.float64)
    means = torch.zeros(num_groups, components, dim, dtype=torch.float64)
    scale_tril = torch.eye(dim, dtype=torch.float64).repeat(num_groups, components, 1, 1)
    for group in range(num_groups):
        members = codes if labels is None or num_groups == 1 else codes[labels.cpu() == group]
        if len(members) < 2:
            raise ValueError(f"class {group} has {len(members)} training image(s); a mixture needs at least 2")
        # a class with fewer images than components gets fewer components (the rest keep weight 0)
        k = min(components, len(members))
        mixture = GaussianMixture(k, covariance_type=covariance, reg_covar=1e-5, random_state=seed, n_init=1, max_iter=200)
        try:
            mixture.fit(members.numpy())
        except ValueError as exc:  # finite codes far too large for EM's covariances: a diverged encoder
            why = str(exc).split(".")[0]
            raise NonFiniteSamples("posterior means of the training images", f"cannot be fitted by a Gaussian mixture ({why})") from None
        weights[group, :k] = torch.from_numpy(mixture.weights_)
        means[group, :k] = torch.from_numpy(mixture.means_)
        cov = torch.from_numpy(mixture.covariances_)
        scale_tril[group, :k] = torch.linalg.cholesky(cov) if covariance == "full" else torch.diag_embed(cov.sqrt())
    return LatentGMM(weights.float(), means.float(), scale_tril.float(), covariance)


@torch.no_grad()
def posterior_means(model: torch.nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """μ(x) of every image, in eval mode (BatchNorm's running statistics), as float32 on the CPU."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(images_u8), batch_size):
        x = to_input(images_u8[start : start + batch_size], device)
        y = labels[start : start + batch_size].to(device) if model.is_conditional else None
        chunks.append(model.encode(x, y)[0].float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def check_mixture_data(labels: torch.Tensor, classes: list[str], per_class: bool) -> None:
    """A mixture is fitted on at least 2 posterior means: of each class (`per_class`, conditional models), or in all."""
    counts = torch.bincount(labels.cpu(), minlength=len(classes)).tolist() if per_class else [len(labels)]
    short = [f"{classes[group] if per_class else 'the training split'} has {plural(count, 'image')}"
             for group, count in enumerate(counts) if count < 2]
    if short:
        raise DataError(
            f"the latent mixture (sampler gmm) is fitted on {'each class' if per_class else 'the'} training images' codes "
            f"and needs at least 2, but {', '.join(short)}. Add images, or sample from the prior (sampler.name: prior "
            f"when training, --set sampler=prior in vaegen test)."
        )


def fit_model_density(model: torch.nn.Module, data, sampler: SamplerConfig, seed: int, batch_size: int, device: torch.device) -> LatentGMM:
    """The mixture for `model` on a split (`vaegen.data.dataset.DecodedImages`, normally the training split)."""
    check_mixture_data(data.labels, data.classes, model.is_conditional)
    codes = posterior_means(model, data.images, data.labels, batch_size, device)
    check_finite_outputs(int((~torch.isfinite(codes)).any(dim=1).sum()), len(codes), "posterior means of the training images")
    num_groups = model.num_classes if model.is_conditional else 1
    return fit_latent_gmm(codes, data.labels, num_groups, sampler.components, sampler.covariance, seed)

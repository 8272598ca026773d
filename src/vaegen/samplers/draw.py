"""Where latent codes come from when a model generates: `sampler(n, generator) -> images`.

Samplers take their randomness from the generator they are given, never the global RNG,
so evaluating a model during training leaves the training random stream untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vaegen.plots import samples_per_class

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def prior_sampler(model: torch.nn.Module, temperature: float = 1.0, class_weights: torch.Tensor | None = None) -> Sampler:
    """The model's own draws (`model.generate`: z ~ N(0, temperature² I) for a VAE); conditional models draw labels
    with `class_weights` (default uniform)."""

    @torch.no_grad()
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        return model.generate(n, generator, temperature, class_weights)

    return sample


@torch.no_grad()
def per_class_samples(
    model: torch.nn.Module,
    per_class: int,
    seed: int,
    temperature: float = 1.0,
    density=None,
    prior_codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """[num_classes * per_class] images, class k's in block k. From the prior every block decodes the same codes
    (`prior_codes`, else `per_class` seeded draws), so the blocks differ only by the class; a fitted latent
    mixture (`density`, a `vaegen.samplers.mixture.LatentGMM`) draws each block's codes from that class's own components."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    if density is None:
        z = prior_codes if prior_codes is not None else torch.randn(per_class, model.latent_dim, generator=generator) * temperature
        codes = [z.to(device)] * model.num_classes
    else:
        codes = [density.to(device).sample(per_class, generator, torch.tensor(k), temperature) for k in range(model.num_classes)]
    return torch.cat([model.decode(z, torch.full((per_class,), k, device=device)) for k, z in enumerate(codes)])


@torch.no_grad()
def generated_samples(model: torch.nn.Module, count: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """`count` images from `model.generate` (any family's own draws) with a fixed seed; conditional models: a block
    of samples_per_class(count) per class, in class order, each drawn with its class's one-hot weights."""
    if not model.is_conditional:
        return model.generate(count, torch.Generator().manual_seed(seed), temperature)
    per_class = samples_per_class(count, model.num_classes)
    one_hot = torch.eye(model.num_classes)
    return torch.cat([model.generate(per_class, torch.Generator().manual_seed(seed), temperature, one_hot[k]) for k in range(model.num_classes)])


def gmm_sampler(
    model: torch.nn.Module, density, temperature: float = 1.0, class_weights: torch.Tensor | None = None
) -> Sampler:
    """z from a fitted latent mixture (`vaegen.samplers.mixture.LatentGMM`); conditional models draw labels like
    `prior_sampler` and then a code from that class's mixture."""
    device = next(model.parameters()).device
    density = density.to(device)
    if model.is_conditional and class_weights is None:
        class_weights = torch.ones(model.num_classes)

    @torch.no_grad()
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        labels = None
        if model.is_conditional:
            labels = torch.multinomial(class_weights.float(), n, replacement=True, generator=generator)
        z = density.sample(n, generator, labels, temperature)
        return model.decode(z, None if labels is None else labels.to(device))

    return sample


def slerp(start: torch.Tensor, end: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `start` to `end`, one row per weight in [0, 1].

    Why not a straight line: codes from the prior N(0, I) in d dimensions have norm close to
    √d, but the midpoint of two independent ones has norm close to √(d/2), a region the decoder
    rarely saw, so linear paths fade to a washed-out average half-way. Along the great circle
    the norm stays that of the ends, and every step looks like a sample. Posterior means of two
    images sit at similar norms too. (Anti)parallel ends have no unique circle: straight line.
    """
    weights = weights.to(start.dtype)[:, None]
    cosine = torch.dot(start, end) / (start.norm() * end.norm()).clamp_min(1e-12)
    angle = torch.arccos(cosine.clamp(-1.0, 1.0))
    if torch.sin(angle).abs() < 1e-4:
        return torch.lerp(start.expand(len(weights), -1), end.expand(len(weights), -1), weights)
    return (torch.sin((1 - weights) * angle) * start + torch.sin(weights * angle) * end) / torch.sin(angle)

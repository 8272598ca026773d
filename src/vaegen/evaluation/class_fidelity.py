"""Conditional fidelity: does a conditional model draw the class it was asked for?

A small CNN, trained once on the real training split (seeded, cached by the data's fingerprint), labels the
samples; fidelity is the fraction of class-k samples it calls k, averaged over classes. Its accuracy on real
validation images is the ceiling to read fidelity against.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vaegen.checkpoint import atomic_write
from vaegen.data.dataset import CLASSIFIERS_FOLDER, FROM_ENTRY
from vaegen.samplers.mixture import latent_codes

CLASSIFIER_FORMAT = 1


class ClassifierNet(nn.Module):
    """Three stride-2 convolution blocks, global average pooling, a linear layer: any image size."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        sizes = [channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for inp, out in zip(sizes, sizes[1:]):
            layers += [nn.Conv2d(inp, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images * 2.0 - 1.0))


def seeded_classifier(channels: int, num_classes: int, seed: int) -> ClassifierNet:
    """A new classifier, its initial weights drawn from `seed`: building it (to train it, or to load its cached weights
    into) must leave the training's random stream where it was, so a run ends the same with or without the cache."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ClassifierNet(channels, num_classes)


def train_classifier(
    images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int, device: torch.device, seed: int = 0, epochs: int = 8,
    batch_size: int = 64,
) -> ClassifierNet:
    generator = torch.Generator().manual_seed(seed)
    net = seeded_classifier(images_u8.shape[1], num_classes, seed).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for _ in tqdm(range(epochs), desc="training the fidelity classifier", unit="epoch", leave=False, disable=None):
        order = torch.randperm(len(images_u8), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x = images_u8[index].to(device).float().div_(255.0)
            flip = torch.rand(len(index), generator=generator) < 0.5  # mirrored fruit is the same fruit
            x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


def load_or_train_classifier(data, num_classes: int, cache_dir: Path, device: torch.device, seed: int = 0) -> ClassifierNet:
    """`data` is the training split (`vaegen.data.dataset.DecodedImages`); the weights are cached by its fingerprint."""
    key = hashlib.sha256(json.dumps([CLASSIFIER_FORMAT, data.fingerprint, num_classes, seed]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / CLASSIFIERS_FOLDER / f"classifier-{key}.safetensors"
    if path.is_file():
        net = seeded_classifier(data.images.shape[1], num_classes, seed)
        net.load_state_dict(load_file(str(path)))
        return net.to(device).eval()
    tqdm.write(f"the class-fidelity classifier: trained once on {len(data.images)} real images, then read from {path.parent}")
    net = train_classifier(data.images, data.labels, num_classes, device, seed)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in net.state_dict().items()}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={FROM_ENTRY: data.fingerprint}))
    except OSError as exc:  # a read-only cache costs time, as for the decoded images and the real features
        warnings.warn(f"could not keep the fidelity classifier in {path.parent} ({exc}); the next run trains it again.", stacklevel=2)
    return net


@torch.no_grad()
def label_agreement(classifier: ClassifierNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of `images` (uint8 or [0, 1] floats) the classifier assigns to `labels`."""
    device = next(classifier.parameters()).device
    hits = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        hits += int((classifier(x).argmax(1).cpu() == labels[start : start + batch_size].cpu()).sum())
    return hits / len(images)


@torch.no_grad()
def conditional_fidelity(
    classifier: ClassifierNet, model: nn.Module, class_names: list[str], per_class: int, seed: int,
    temperature: float = 1.0, density=None,
) -> dict[str, float]:
    """Fidelity (the mean over classes) and each class's own, for `per_class` samples of every class drawn
    from the prior, or from `density` (a fitted `vaegen.samplers.mixture.LatentGMM`) when given."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for k, name in enumerate(class_names):
        labels = torch.full((per_class,), k)
        if callable(getattr(model, "decode", None)):  # a latent family: codes from the prior or the mixture
            z = latent_codes(per_class, model.latent_dim, generator, labels, temperature, density)
            images = model.decode(z.to(device), labels.to(device))
        else:  # any other family draws with its own generate, told the class by one-hot class weights
            images = model.generate(per_class, generator, temperature, torch.eye(len(class_names))[k])
        scores[name] = label_agreement(classifier, images, labels)
    return {"cond_fidelity": sum(scores.values()) / len(scores), **{f"cond_fidelity/{name}": score for name, score in scores.items()}}

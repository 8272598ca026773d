"""Sharing a trained model the way the field does: a model card (README.md in the Hugging Face format) in every
best_models/<run>/, so the folder can be uploaded to the Hub as it is, and Hub repo ids where a model folder goes.

    hf upload you/apples-vae best_models/apples-vae     # the folder, card included
    vaegen.load("you/apples-vae")                       # anywhere: downloaded once into the Hugging Face cache
"""

from __future__ import annotations

import re
from pathlib import Path

from vaegen.config import Config
from vaegen.errors import CheckpointError, pixel_size, plural
from vaegen.evaluation.frechet import protocol_text

HUB_PREFIX = "hf://"
# the Hub's owner/name; a first part that is a folder here makes it a local path instead
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
TRAINING_ONLY = {"beta", "lr", "images_per_s", "skipped_steps"}
MODEL_FILES = ["*.safetensors", "config.yaml", "metrics.json", "samples.png", "README.md"]  # weights, sampler, card


def hub_repo_id(path: str) -> str | None:
    """The Hub repo id `path` names: `hf://owner/name`, or a bare `owner/name` whose `owner` is no folder here."""
    if path.startswith(HUB_PREFIX):
        path = path[len(HUB_PREFIX):]
    elif Path(path).exists() or Path(path.split("/")[0]).exists():
        return None
    return path if REPO_ID.match(path) and ".." not in path else None


def hub_snapshot(repo_id: str) -> Path:
    """The model folder of Hub repo `repo_id`, downloaded into the Hugging Face cache, or the cached copy offline."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES))
    except Exception as error:  # offline without a cached copy, no such repo, a gated one: the same way forward
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise CheckpointError(
            f"{repo_id} is not a folder here, so vaegen looked for it on the Hugging Face Hub and could not get it "
            f"({type(error).__name__}: {reason}). Check the id (https://huggingface.co/{repo_id}) and your network or "
            f"HF_TOKEN; offline, download it once elsewhere into the Hugging Face cache ($HF_HUB_CACHE) with "
            f"`hf download {repo_id}`, or pass the model's local folder."
        ) from None


def model_card(name: str, config: Config, metrics: dict, family: str, parameters: int, latent_dim: int | None = None) -> str:
    """README.md for a model folder: Hub metadata, then what the model is, its data, recipe, scores and how to load it.
    `metrics` is the folder's metrics.json (criterion, value, epoch, metrics, protocol); `latent_dim` the module's
    latent size (a grid's or a hierarchy's, flattened), None for a model without codes."""
    from huggingface_hub import ModelCardData

    classes = metrics["classes"]
    conditional = config.model.conditional != "none"
    tags = ["vaegen", family, "image-generation", "pytorch"] + (["class-conditional"] if conditional else [])
    card = ModelCardData(library_name="vaegen", tags=tags, pipeline_tag="unconditional-image-generation")
    latent = "" if latent_dim is None else f", latent size {latent_dim}"
    about = (f"**{config.model.name}** (the {family} family, {parameters:,} parameters{latent}), "
             f"trained with vaegen on {pixel_size(*config.data.image_size)} {'RGB' if config.data.channels == 3 else 'grayscale'} "
             f"images of {len(classes)} {'class' if len(classes) == 1 else 'classes'}: {', '.join(classes)}"
             f"{' (it draws the class it is asked for)' if conditional else ''}. The best epoch, {metrics['epoch']}, was "
             f"selected by {metrics['criterion']} = {metrics['value']:.4g}.")
    return "\n\n".join([f"---\n{card.to_yaml()}\n---", f"# {name}", about,
                        _recipe(config), _scores(metrics), "## Samples\n\n![samples](samples.png)", _how_to_load()]) + "\n"


def _recipe(config: Config) -> str:
    data = config.data
    limit = f", at most {data.limit} per class" if data.limit else ""
    rows = [("data", f"{data.title} ({data.source}: {data.root}){limit}, val_fraction {data.val_fraction}, hflip {data.hflip}"),
            ("model", f"{config.model.name}, widths {list(config.model.widths)}, conditional {config.model.conditional}"),
            ("loss", f"recon {config.loss.recon}, perceptual {config.loss.perceptual}"),
            ("β", f"{config.beta.schedule} to {config.beta.max}"),
            ("optimiser", f"lr {config.optim.lr:g}, batch {config.train.batch_size}, {plural(config.train.epochs, 'epoch')}, seed {config.train.seed}"),
            ("sampler", config.sampler.name)]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## Recipe\n\n| | |\n|---|---|\n{table}\n\nThe whole recipe is [config.yaml](config.yaml): `vaegen train --config config.yaml` trains it again."


def _scores(metrics: dict) -> str:
    # the held-out and sample scores; the training split's terms, β, lr and speed are in metrics.json
    shown = {key: value for key, value in metrics["metrics"].items()
             if isinstance(value, (int, float)) and not key.startswith("train_") and key not in TRAINING_ONLY}
    table = "\n".join(f"| {key} | {value:.4g} |" for key, value in shown.items())
    protocol = metrics.get("protocol")
    measured = f"Measured on {protocol_text(protocol)} (metrics.json has the whole protocol block)." if protocol else "No sample evaluation ran (eval.backbone: none)."
    return f"## Metrics at epoch {metrics['epoch']}\n\n| metric | value |\n|---|---|\n{table}\n\n{measured}"


def _how_to_load() -> str:
    return ("## Use\n\n```python\nimport vaegen\n\nmodel = vaegen.load(\"path/to/this/folder\")  # or its Hugging Face Hub "
            "id: vaegen.load(\"owner/name\")\nimages = model.sample(16, seed=0)  # [16, C, H, W] in [0, 1]\n```\n\n"
            "`vaegen test --checkpoint path/to/this/folder` scores it again on its data. Loading runs no code: the "
            "weights are safetensors, the config YAML.")

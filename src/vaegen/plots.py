"""The pictures a run leaves behind: image grids and the loss/beta curves."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torchvision.utils import make_grid

from vaegen.checkpoint import atomic_write

# a class's samples wrap onto more rows after this many: one long row per class shrinks to a hairline on a page
BLOCK_COLUMNS = 8
# pictures written for people to open (vaegen test's, a run's samples and reconstructions): tiles smaller than
# this are enlarged by a whole factor towards it, since a 16 or 32 px tile is a smudge in an image viewer
VIEW_TILE = 96


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] to one [3 or C, H', W'] grid; square-ish unless nrow is given."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    # make_grid repeats a single channel three times; keep grayscale grayscale
    return grid[:1] if images.shape[1] == 1 else grid


def to_pil(grid: torch.Tensor):
    """A [C, H, W] grid in [0, 1] as an 8-bit PIL image (L for one channel, else RGB)."""
    from PIL import Image

    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def scaled(image, scale: int):
    """`image` enlarged by a whole factor, nearest neighbour: sharp pixels, no invented detail."""
    from PIL import Image

    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def view_scale(images: torch.Tensor) -> int:
    """The whole factor that enlarges tiles of `images` ([N, C, H, W]) to at most VIEW_TILE px on their longer
    side: 16 px tiles 6x, 32 px 3x, 48 px 2x; tiles over VIEW_TILE / 2 px (64 px, say) stay as they are."""
    return max(1, VIEW_TILE // max(images.shape[-2:]))


def for_viewing(grid: torch.Tensor, images: torch.Tensor):
    """A grid of `images` (from `image_grid` or `reconstruction_grid`) as PIL, enlarged by `view_scale(images)`:
    what is written for people to open."""
    return scaled(to_pil(grid), view_scale(images))


def class_blocks(images: torch.Tensor, names: list[str]):
    """One labelled block per class (`labelled_rows` wrapping after BLOCK_COLUMNS), enlarged by `view_scale`
    with the names drawn at that size."""
    return labelled_rows(images, names, BLOCK_COLUMNS, view_scale(images))


def samples_per_class(total: int, num_classes: int) -> int:
    """How many samples each class's block holds when about `total` are shown in all: the same number for
    every class, never more than total // num_classes (so the codes of a `total`-sample grid suffice), and in
    whole rows of BLOCK_COLUMNS once a block wraps (64 asked for with 3 classes: two rows of 8 each, 48 shown).
    At least one each, so more classes than `total` show one sample per class."""
    share = max(1, total // num_classes)
    return share if share <= BLOCK_COLUMNS else share // BLOCK_COLUMNS * BLOCK_COLUMNS


@functools.lru_cache(maxsize=None)
def label_font(size: int):
    """DejaVu Sans at `size` px, from matplotlib's data: Pillow's default font has ASCII only, and draws the other
    letters of a class name ("Äpfel grün", "яблоко") as boxes."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def labelled_rows(images: torch.Tensor, names: list[str], columns: int | None = None, scale: int = 1):
    """The images in len(names) equal blocks (len(images) divisible by len(names)), each block's name in a
    left margin, vertically centred on it, as PIL (RGB; L for one-channel images). A block wraps after `columns`
    images (None: one row), and blocks of more than one row are set apart by a gap with a rule. `scale` enlarges
    the images before the names are drawn, so the text is sharp at any scale."""
    from PIL import Image, ImageDraw

    per_block = len(images) // len(names)
    columns = min(columns or per_block, per_block)
    mode = "L" if images.shape[1] == 1 else "RGB"
    blocks = [to_pil(image_grid(block, nrow=columns)).convert(mode) for block in images.split(per_block)]
    blocks = [scaled(block, scale) for block in blocks]
    tile = images.shape[-2] * scale
    # readable at the model's resolution, and still on screen when the page column shrinks a wide picture
    font = label_font(min(24, max(11, tile // 4)))
    pad = font.size // 2
    margin = 2 * pad + math.ceil(max(font.getlength(name) for name in names))
    shared = 2 * scale  # the padding between two blocks is drawn once, as between two rows of one grid
    gap = images.shape[-2] // 3 * scale if per_block > columns else 0  # a whole number of pixels at scale 1
    step = blocks[0].height - shared + gap
    page = Image.new(mode, (margin + blocks[0].width, step * (len(blocks) - 1) + blocks[0].height), "white")
    draw = ImageDraw.Draw(page)
    for index, (block, name) in enumerate(zip(blocks, names)):
        top = index * step
        page.paste(block, (margin, top))
        draw.text((pad, top + block.height / 2), name, fill="black", font=font, anchor="lm")
        if gap and index:
            rule = top - gap / 2 + shared / 2
            draw.line([(pad, rule), (page.width - pad, rule)], fill=200 if mode == "L" else (200, 200, 200), width=max(1, scale // 2))
    return page


def save_png(image, path: Path) -> None:
    """Atomically write a grid tensor (or a PIL image) as PNG."""
    image = to_pil(image) if isinstance(image, torch.Tensor) else image
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of originals, each followed by a row of their reconstructions."""
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], reconstructions[start : start + per_row]]
        missing = per_row - len(rows[-1])
        if missing:
            pad = torch.ones(missing, *originals.shape[1:], device=originals.device)
            rows[-2], rows[-1] = torch.cat([rows[-2], pad]), torch.cat([rows[-1], pad])
    return image_grid(torch.cat(rows), nrow=per_row)


# the panel titles of the terms families log (a term without one is titled by its name)
CURVE_TITLES = {"loss": "loss (the objective)", "nelbo": "recon + KL (β = 1)", "recon": "reconstruction", "kl": "KL",
                "latent_l2": "½‖z‖² (latent L2)"}


def logged_terms(rows: list[dict]) -> list[str]:
    """The loss terms a run logged (train_<term>), in the order of its rows' keys; counters and rates left out."""
    keys = dict.fromkeys(key for row in rows for key in row)
    return [key.removeprefix("train_") for key in keys if key.startswith("train_") and isinstance(rows[0].get(key, 0.0), float)]


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Loss terms and beta against the epoch, from metrics.jsonl rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [(CURVE_TITLES.get(term, term), [f"train_{term}", f"val_{term}"]) for term in logged_terms(rows)] + [("β", ["beta"])]
    distances = sorted({key for row in rows for key in row if key.startswith(("fd_", "fid_"))})
    if distances:
        panels.append(("Fréchet distance", distances))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), constrained_layout=True)
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
            if points:
                label = key if key in distances else key.split("_")[0]
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
        values = [row[key] for row in rows for key in keys if row.get(key) is not None]
        if name != "β" and values and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")  # the first epochs' losses would otherwise flatten the rest
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # not 1.5 on a short run
        ax.grid(alpha=0.3)
        if len(keys) > 1 or keys == distances:
            ax.legend()
    if title:
        fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)

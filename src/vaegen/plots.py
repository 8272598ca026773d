"""The pictures a run leaves behind: image grids and the loss/beta curves; and the runs `vaegen compare` sets side by side."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont  # torchvision.utils imports them anyway
from torchvision.utils import make_grid

from vaegen.checkpoint import atomic_write

BLOCK_COLUMNS = 8  # a class's samples wrap after this many: one long row per class shrinks to a hairline on a page
VIEW_TILE = 96  # pictures written for people to open enlarge smaller tiles towards this: 16 px is a smudge
# the panel titles of the terms families log (a term without one is titled by its name)
CURVE_TITLES = {"loss": "loss (the objective)", "nelbo": "recon + KL (β = 1)", "recon": "reconstruction", "kl": "KL",
                "latent_l2": "½‖z‖² (latent L2)"}


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] to one [C, H', W'] grid; square-ish unless nrow is given."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return grid[:1] if images.shape[1] == 1 else grid  # make_grid repeats a single channel three times


def to_pil(grid: torch.Tensor) -> Image.Image:
    """A [C, H, W] grid in [0, 1] as an 8-bit PIL image (L for one channel, else RGB)."""
    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def scaled(image: Image.Image, scale: int) -> Image.Image:
    """`image` enlarged by a whole factor, nearest neighbour: sharp pixels, no invented detail."""
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def view_scale(images: torch.Tensor) -> int:
    """The whole factor that enlarges tiles of `images` to at most VIEW_TILE px on their longer side (1 from 49 px)."""
    return max(1, VIEW_TILE // max(images.shape[-2:]))


def for_viewing(grid: torch.Tensor, images: torch.Tensor) -> Image.Image:
    """A grid of `images` as PIL, enlarged by `view_scale(images)`: what is written for people to open."""
    return scaled(to_pil(grid), view_scale(images))


def class_blocks(images: torch.Tensor, names: list[str]) -> Image.Image:
    """One labelled block per class, wrapping after BLOCK_COLUMNS, enlarged by `view_scale`."""
    return labelled_rows(images, names, BLOCK_COLUMNS, view_scale(images))


def samples_per_class(total: int, num_classes: int) -> int:
    """Each class's share of about `total` samples: at most total // num_classes but at least 1, in whole rows of
    BLOCK_COLUMNS once a block wraps (64 for 3 classes: 16 each, two rows of 8)."""
    share = max(1, total // num_classes)
    return share if share <= BLOCK_COLUMNS else share // BLOCK_COLUMNS * BLOCK_COLUMNS


@functools.lru_cache(maxsize=None)
def label_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, from matplotlib's data: Pillow's default font draws letters outside ASCII ("Äpfel") as boxes."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def labelled_rows(images: torch.Tensor, names: list[str], columns: int | None = None, scale: int = 1) -> Image.Image:
    """The images in len(names) equal blocks, each named in a left margin (RGB, or L for one channel); a block wraps
    after `columns` (None: one row), wrapped blocks set apart by a ruled gap. Names are drawn after the `scale`."""
    # Pillow's text layout (raqm) fails on a line break inside a label: \n, \r, U+001C-001E, U+0085, U+2029
    names = [" ".join(name.splitlines()) for name in names]
    per_block = len(images) // len(names)
    columns = min(columns or per_block, per_block)
    mode = "L" if images.shape[1] == 1 else "RGB"
    blocks = [scaled(to_pil(image_grid(block, nrow=columns)).convert(mode), scale) for block in images.split(per_block)]
    # readable at the model's resolution, and still on screen when the page column shrinks a wide picture
    font = label_font(min(24, max(11, images.shape[-2] * scale // 4)))
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
            gray = 200 if mode == "L" else (200, 200, 200)
            draw.line([(pad, rule), (page.width - pad, rule)], fill=gray, width=max(1, scale // 2))
    return page


def save_png(image: torch.Tensor | Image.Image, path: Path) -> None:
    """Atomically write a grid tensor (or a PIL image) as PNG."""
    image = to_pil(image) if isinstance(image, torch.Tensor) else image
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of originals, each followed by a row of their reconstructions; a short last pair of rows padded white."""
    pad = torch.ones(-len(originals) % per_row, *originals.shape[1:], device=originals.device)
    originals, reconstructions = torch.cat([originals, pad]), torch.cat([reconstructions, pad])
    rows = [row for pair in zip(originals.split(per_row), reconstructions.split(per_row)) for row in pair]
    return image_grid(torch.cat(rows), nrow=per_row)


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Loss terms and beta against the epoch, from metrics.jsonl rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # the loss terms logged (train_<term>), in the order of the rows' keys; counters and rates left out
    terms = [key.removeprefix("train_") for key in dict.fromkeys(key for row in rows for key in row)
             if key.startswith("train_") and isinstance(rows[0].get(key, 0.0), float)]
    panels = [(CURVE_TITLES.get(term, term), [f"train_{term}", f"val_{term}"]) for term in terms]
    distances = sorted({key for row in rows for key in row if key.startswith(("fd_", "fid_"))})
    panels += [("β", ["beta"])] + ([("Fréchet distance", distances)] if distances else [])
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
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # not 1.5 on a short run
        ax.grid(alpha=0.3)
        if len(keys) > 1 or keys == distances:
            ax.legend()
    if title:
        fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def overlaid_curves(quantities: dict[str, dict[str, list[tuple]]], runs: list[str], title: str = "") -> bytes:
    """PNG bytes: a row per quantity, every run overlaid, against the epoch (left) and the run's wall-clock time (right,
    where any run logged it). `quantities`: key -> run name -> [(epoch, wall seconds or None, value)]; `runs` fixes
    each run's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    walls = [wall for series in quantities.values() for points in series.values() for _, wall, _ in points if wall is not None]
    unit, per = _time_unit(max(walls, default=0.0))
    columns = 2 if walls else 1
    fig, axes = plt.subplots(len(quantities), columns, figsize=(5 * columns, 3.0 * len(quantities)), squeeze=False,
                             constrained_layout=True)
    for (key, series), panels in zip(quantities.items(), axes):
        for name, points in series.items():
            style = {"color": f"C{runs.index(name) % 10}", "label": name, "marker": "o" if len(points) < 30 else None}
            panels[0].plot([epoch for epoch, _, _ in points], [value for _, _, value in points], **style)
            timed = [(wall / per, value) for _, wall, value in points if wall is not None]
            if timed and walls:
                panels[1].plot(*zip(*timed), **style)
        untimed = [name for name, points in series.items() if not any(wall is not None for _, wall, _ in points)]
        if untimed and walls:  # runs from before metrics.jsonl's wall_s: their time is not known, so not guessed
            panels[1].text(0.02, 0.02, f"no wall time logged: {', '.join(untimed)}", transform=panels[1].transAxes, fontsize=8)
        values = [value for points in series.values() for _, _, value in points]
        for ax, xlabel in zip(panels, ["epoch", f"wall-clock time ({unit})"]):
            if values and min(values) > 0 and max(values) > 10 * min(values):
                ax.set_yscale("log")  # the first epochs' values would otherwise flatten the rest
            ax.set(title=key, xlabel=xlabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        panels[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        if walls:
            panels[1].set_xlim(left=0)  # from the start of training: a late first point is time spent, not hidden
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _time_unit(longest: float) -> tuple[str, float]:
    """The unit a time axis reads best in, and its seconds."""
    return ("h", 3600.0) if longest >= 3 * 3600 else ("min", 60.0) if longest >= 180 else ("s", 1.0)


def side_by_side(images: list[Image.Image], labels: list[str], per_row: int = 4) -> Image.Image:
    """The pictures (RGB) each under its label, `per_row` to a row, top-aligned on white."""
    font = label_font(20)
    pad = font.size // 2
    images = [image.convert("RGB") for image in images]
    width = max(image.width for image in images)
    label_height = font.size + 2 * pad
    rows = [images[start:start + per_row] for start in range(0, len(images), per_row)]
    heights = [label_height + max(image.height for image in row) + pad for row in rows]
    page = Image.new("RGB", (min(len(images), per_row) * (width + pad) + pad, sum(heights)), "white")
    draw = ImageDraw.Draw(page)
    for index, (image, label) in enumerate(zip(images, labels)):
        row, column = divmod(index, per_row)
        left, top = pad + column * (width + pad), sum(heights[:row])
        draw.text((left, top + pad), _fitted(label, font, width), fill="black", font=font)
        page.paste(image, (left, top + label_height))
    return page


def _fitted(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """`text`, cut with an ellipsis where it is wider than `width` px."""
    while len(text) > 1 and font.getlength(text) > width:
        text = text[:-2] + "…"
    return text


def _figure_image(fig) -> Image.Image:
    """A matplotlib figure as an RGB PIL image (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def ranked_bars(values: list[float], highlighted: list[bool], ylabel: str, title: str,
                threshold: float | None = None) -> Image.Image:
    """One bar per index, sorted from the largest value, each labelled with its index; highlighted bars coloured, the
    others grey; an optional dashed horizontal `threshold`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(values)), key=lambda index: -values[index])
    fig, ax = plt.subplots(figsize=(min(16.0, max(5.0, 0.22 * len(values) + 2)), 3.6), constrained_layout=True)
    colours = ["C0" if highlighted[index] else "0.7" for index in order]
    ax.bar(range(len(order)), [values[index] for index in order], color=colours)
    ax.set_xticks(range(len(order)), [str(index) for index in order], fontsize=7 if len(order) > 32 else 9,
                  rotation=90 if len(order) > 32 else 0)
    if threshold is not None:
        ax.axhline(threshold, color="C3", linestyle="--", linewidth=1)
    ax.set(xlabel="latent dimension, sorted", ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.yaxis.label.set_fontsize(8)
    ax.grid(axis="y", alpha=0.3)
    return _figure_image(fig)


def latent_map_figure(maps: dict, labels, names: list[str], title: str) -> Image.Image:
    """One scatter panel per 2-D embedding in `maps` (name -> [N, 2] array), points coloured by class, one legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps) + 1.6, 4.4), squeeze=False, constrained_layout=True)
    for ax, (name, points) in zip(axes[0], maps.items()):
        for index, class_name in enumerate(names):
            chosen = labels == index
            if chosen.any():
                ax.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, color=f"C{index % 10}", label=class_name)
        ax.set(title=name, xticks=[], yticks=[])
    handles, legend_names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend_names, loc="outside right upper", fontsize=8, markerscale=2)
    fig.suptitle(title)
    return _figure_image(fig)

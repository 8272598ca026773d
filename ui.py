"""vaegen's gallery: `streamlit run ui.py [-- --best-dir DIR]`.

Browse the best checkpoints under best_models/ (or --best-dir, or $VAEGEN_BEST_DIR), then sample,
pick a class, interpolate and reconstruct in the browser. This file only lays out widgets; what
they show comes from vaegen.gallery.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from vaegen import gallery
from vaegen.errors import VaegenError

UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMG_EXTENSIONS)  # what the training data may be made of


# max_entries: a page left open while training rewrites model.safetensors would otherwise keep every version
@st.cache_resource(max_entries=8, show_spinner="loading the model")
def cached_model(path: str, mtime_ns: int):
    """One load per (folder, weights file time): a rewritten best model (a newer mtime) is loaded again."""
    return gallery.load_model(Path(path))


def show(image, caption: str, file_name: str, key: str) -> None:
    """The picture, enlarged for the screen, and a button that downloads it at the model's resolution."""
    st.image(gallery.png_bytes(gallery.enlarge(image)), caption=caption, output_format="PNG")  # pixels as drawn, not JPEG
    st.download_button("Download PNG", gallery.png_bytes(image), file_name=file_name, mime="image/png", key=key, on_click="ignore")


def pick_run(root: Path, runs: list[gallery.Run]) -> gallery.Run:
    """The sidebar: every run with a one-line summary, the chosen one's metadata; ?run=NAME preselects one."""
    names = [run.name for run in runs]
    requested = st.query_params.get("run")
    if requested is not None and requested not in names:
        try:
            gallery.open_run(root, requested)  # refuses names outside the root with the reason
            st.error(f"{requested!r} is not among the models listed; pick one from the list.")
        except VaegenError as exc:
            st.error(str(exc))
        requested = None
    name = st.sidebar.radio(
        "Models",
        names,
        index=names.index(requested) if requested else 0,
        captions=[gallery.summary(run) for run in runs],
        key="run",
    )
    st.query_params["run"] = name  # a link to this page opens this model
    run = runs[names.index(name)]
    st.sidebar.markdown("\n".join(f"- **{label}**: {text}" for label, text in gallery.describe(run).items()))
    return run


def generate_tab(model, stem: str, choice: str | None) -> None:
    all_rows = choice == gallery.ALL_CLASSES
    controls, picture = st.columns([1, 2], gap="large")
    with controls.form("generate"):
        count = st.number_input("samples per class row" if all_rows else "samples", 1, 256, 16, key="count")
        seed = st.number_input("seed", 0, 2**31 - 1, 0, key="seed")
        temperature = st.slider("temperature (standard deviation of z)", 0.0, 2.0, 1.0, 0.05, key="temperature")
        if st.form_submit_button("Generate", type="primary", key="generate"):
            # kept, so the grid stays while other widgets (download, tabs) rerun the page
            st.session_state["generated"] = (int(count), int(seed), float(temperature))
    if "generated" not in st.session_state:
        picture.caption("Press Generate to draw samples from the prior.")
        return
    count, seed, temperature = st.session_state["generated"]
    grid = gallery.sample_view(model, count, seed, temperature, choice)
    label = f"{choice}, " if choice else ""
    with picture:
        show(grid, f"{label}{count} samples, seed {seed}, temperature {temperature:g}",
             f"{stem}-samples-seed{seed}.png", key="download_samples")


def interpolate_tab(model, stem: str, choice: str | None) -> None:
    between = st.radio("between", ["two random latents", "two uploaded images"], horizontal=True, key="between")
    steps = st.slider("steps", 3, 16, 8, key="steps")
    if between == "two random latents":
        seed = st.number_input("seed of the two latents", 0, 2**31 - 1, 0, key="interp_seed")
        view = gallery.interpolation_view(model, steps, choice, seed=seed)
        caption = f"{steps} steps between two prior draws (seed {seed})"
    else:
        left, right = st.columns(2)
        first = left.file_uploader("first image", UPLOAD_TYPES, key="interp_first")
        second = right.file_uploader("second image", UPLOAD_TYPES, key="interp_second")
        if first is None or second is None:
            st.caption("Upload two images; each is resized and converted like the training data.")
            return
        try:
            images = [gallery.prepare_upload(upload.getvalue(), model) for upload in (first, second)]
        except VaegenError as exc:
            st.error(str(exc))
            return
        view = gallery.interpolation_view(model, steps, choice, images=torch.cat(images))
        caption = f"{first.name} → {second.name}: the images at the ends, {steps} decoded steps between their codes"
    show(view, caption, f"{stem}-interpolation.png", key="download_interpolation")


def reconstruct_tab(model, stem: str, choice: str | None) -> None:
    upload = st.file_uploader("an image", UPLOAD_TYPES, key="recon_upload")
    if upload is None:
        st.caption("Upload an image of any size or mode; it is resized and converted like the training data.")
        return
    try:
        image = gallery.prepare_upload(upload.getvalue(), model)
    except VaegenError as exc:
        st.error(str(exc))
        return
    height, width = model.config.data.image_size
    show(gallery.reconstruction_view(model, image, choice),
         f"{upload.name} as the model sees it ({height}×{width}), and its reconstruction",
         f"{stem}-reconstruction.png", key="download_reconstruction")


def main() -> None:
    st.set_page_config(page_title="vaegen gallery", layout="wide")
    root = gallery.checkpoint_root(sys.argv[1:], Path(__file__).resolve().parent / "best_models")
    st.sidebar.title("vaegen gallery")
    st.sidebar.caption(f"models under `{root}`")
    runs = gallery.find_runs(root)
    if not runs:
        st.title("vaegen gallery")
        st.info(gallery.how_to_train(root))
        return
    run = pick_run(root, runs)
    st.title(run.name)
    if run.error is not None:
        st.error(run.error)
        return
    try:
        model = cached_model(str(run.path), (run.path / gallery.WEIGHTS).stat().st_mtime_ns)
    except (VaegenError, OSError) as exc:  # OSError: the folder vanished or became unreadable since the listing
        st.error(str(exc))
        return
    choice = None
    if model.is_conditional:
        choice = st.selectbox("class", gallery.class_choices(model), key="class")
    stem = run.path.name if run.name == "." else run.name.replace("/", "_")  # download file names
    generate, interpolate, reconstruct = st.tabs(["Generate", "Interpolate", "Reconstruct"])
    with generate:
        generate_tab(model, stem, choice)
    with interpolate:
        interpolate_tab(model, stem, choice)
    with reconstruct:
        reconstruct_tab(model, stem, choice)


main()

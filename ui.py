"""vaegen's gallery, `streamlit run ui.py [-- --best-dir DIR]`: browse the best checkpoints under best_models/ (or
--best-dir, or $VAEGEN_BEST_DIR), then sample, interpolate, reconstruct and look at the latent space, or compare
several. Widgets only: vaegen.apps.gallery draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from vaegen.apps import gallery
from vaegen.errors import VaegenError, plural

UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMG_EXTENSIONS)  # what the training data may be made of


# max_entries: a page left open while training rewrites model.safetensors would otherwise keep every version
@st.cache_resource(max_entries=8, show_spinner="loading the model")
def cached_model(path: str, mtime_ns: int, sampling: tuple = ()):
    """One load per (folder, weights file time, sampling settings): a rewritten best model (a newer mtime) is loaded again."""
    return gallery.load_model(Path(path), dict(sampling))


def pngs(picture: gallery.Picture) -> tuple[bytes, bytes]:
    """The picture enlarged for the screen, and at the model's resolution (labels included) for the download."""
    return gallery.png_bytes(picture.render(picture.screen_scale())), gallery.png_bytes(picture.render(1))


# Streamlit reruns the whole page on every click, so each picture is drawn once per model version (model_key,
# like cached_model's; `_model` itself is not hashed) and settings.
@st.cache_data(max_entries=32, show_spinner="drawing")
def samples_png(model_key: tuple, _model, count: int, seed: int, temperature: float, choice: str | None):
    return pngs(gallery.sample_view(_model, count, seed, temperature, choice))


@st.cache_data(max_entries=32, show_spinner="drawing")
def interpolation_png(model_key: tuple, _model, steps: int, choice: str | None, seed: int = 0,
                      temperature: float = 1.0, uploads: tuple[bytes, bytes] | None = None):
    """Between two random codes from `seed`, or between the two uploaded image files."""
    images = None if uploads is None else torch.cat([gallery.prepare_upload(data, _model) for data in uploads])
    return pngs(gallery.interpolation_view(_model, steps, choice, seed, temperature, images))


@st.cache_data(max_entries=32, show_spinner="drawing")
def reconstruction_png(model_key: tuple, _model, upload: bytes, choice: str | None):
    return pngs(gallery.reconstruction_view(_model, gallery.prepare_upload(upload, _model), choice))


def show(pictures: tuple[bytes, bytes], caption: str, stem: str, choice: str | None, view: str, **settings) -> None:
    """The screen PNG (lossless) with its caption below, not in st.image, where a long caption widens the element and
    the browser stretches the picture, blurred; the caption is the alt text too. Then the download button."""
    screen, download = pictures
    st.image(screen, alt=caption, output_format="PNG")
    st.caption(caption)
    st.download_button("Download PNG", download, file_name=gallery.download_name(stem, view, choice, **settings),
                       mime="image/png", key=f"download_{view}", on_click="ignore")


def pick_run(root: Path, runs: list[gallery.Run]) -> gallery.Run:
    """The sidebar: every run with a summary, the chosen one's metadata; ?run=NAME, else the first that opens."""
    names = [run.name for run in runs]
    requested = st.query_params.get("run")
    if requested is not None and requested not in names:
        try:
            gallery.open_run(root, requested)  # refuses names outside the root with the reason
            st.error(f"{requested!r} is not among the models listed; pick one from the list.")
        except VaegenError as exc:
            st.error(str(exc))
        requested = None
    working = next((index for index, run in enumerate(runs) if run.error is None), 0)
    name = st.sidebar.radio("Models", names, index=names.index(requested) if requested else working,
                            captions=[gallery.summary(run) for run in runs], key="run")
    st.query_params["run"] = name  # a link to this page opens this model
    run = runs[names.index(name)]
    rows = gallery.describe(run)
    if rows:
        st.sidebar.markdown("\n".join(f"- **{label}**: {text}" for label, text in rows.items()))
    return run


def sampler_controls(model, folder: str) -> tuple:
    """The sidebar's controls for the settings that change only how the model samples (a diffusion model's steps):
    the (key, value) pairs changed from the trained ones."""
    controls, changed = gallery.sampling_controls(model), []
    if not controls:
        return ()
    with st.sidebar.expander("Sampler", expanded=True):
        for control in controls:
            key = f"sampling_{control.key}_{folder}"  # per model: another one's trained values are not carried over
            if control.choices is not None:
                value = st.selectbox(control.key, control.choices, control.choices.index(control.value), help=control.help, key=key)
            elif isinstance(control.value, int):
                value = int(st.number_input(control.key, control.low, None, control.value, 1, help=control.help, key=key))
            elif control.high is not None:
                value = st.slider(control.key, control.low, control.high, control.value, 0.05, help=control.help, key=key)
            else:
                value = st.number_input(control.key, control.low, None, control.value, 0.5, help=control.help, key=key)
            if value != control.value:
                changed.append((control.key, value))
    return tuple(changed)


def generate_tab(model, model_key: tuple, stem: str, choice: str | None) -> None:
    all_rows, limit = choice == gallery.ALL_CLASSES, gallery.max_samples(choice)
    controls, picture = st.columns([1, 2], gap="large")
    with controls.form("generate"):
        count = st.number_input("samples per class" if all_rows else "samples", 1, limit, 16, key="count")
        seed = st.number_input("seed", 0, 2**31 - 1, 0, key="seed")
        temperature = st.slider(gallery.temperature_label(model), 0.0, 2.0, 1.0, 0.05, key="temperature")
        if st.form_submit_button("Generate", type="primary", key="generate"):
            # kept through other widgets' reruns, for this model folder only: another model does not draw it unasked
            st.session_state["generated"] = (model_key[0], int(count), int(seed), float(temperature))
    folder, count, seed, temperature = st.session_state.get("generated", (None, 0, 0, 0.0))
    if folder != model_key[0]:
        picture.caption(f"Press Generate to draw samples from {gallery.draws_from(model)}.")
        return
    count = min(count, limit)  # a request made for one class may be larger than all classes allow
    label = f"{choice + ', ' if choice else ''}{plural(count, 'sample')}{' per class' if all_rows else ''}"
    sampling = dict(model_key[2]) if len(model_key) > 2 else {}  # the sampler's settings changed in the sidebar
    caption = f"{label}, seed {seed}, temperature {temperature:g}" + "".join(f", {k} {v}" for k, v in sampling.items())
    with picture:
        show(samples_png(model_key, model, count, seed, temperature, choice), caption, stem, choice, "samples",
             count=count, seed=seed, T=temperature, **sampling)


def interpolate_tab(model, model_key: tuple, stem: str, choice: str | None) -> None:
    between = st.radio("between", ["two random latents", "two uploaded images"], horizontal=True, key="between")
    steps = st.slider("steps", 3, 16, 8, key="steps")
    left, right = st.columns(2)
    if between == "two random latents":
        seed = left.number_input("seed of the two latents", 0, 2**31 - 1, 0, key="interp_seed")
        temperature = right.slider(gallery.temperature_label(model), 0.0, 2.0, 1.0, 0.05, key="interp_temperature")
        pictures = interpolation_png(model_key, model, steps, choice, seed, temperature)
        caption = (f"{steps} steps between two draws from {gallery.draws_from(model)} "
                   f"(seed {seed}, temperature {temperature:g})")
        settings = {"steps": steps, "seed": seed, "T": temperature}
    else:
        first = left.file_uploader("first image", UPLOAD_TYPES, key="interp_first")
        second = right.file_uploader("second image", UPLOAD_TYPES, key="interp_second")
        if first is None or second is None:
            st.caption("Upload two images; each is resized and converted like the training data.")
            return
        try:
            pictures = interpolation_png(model_key, model, steps, choice, uploads=(first.getvalue(), second.getvalue()))
        except VaegenError as exc:
            st.error(str(exc))
            return
        caption = f"{first.name} → {second.name}: the images at the ends, {steps} decoded steps between their codes"
        settings = {"steps": steps}
    show(pictures, caption, stem, choice, "interpolation", **settings)


def reconstruct_tab(model, model_key: tuple, stem: str, choice: str | None) -> None:
    upload = st.file_uploader("an image", UPLOAD_TYPES, key="recon_upload")
    if upload is None:
        st.caption("Upload an image of any size or mode; it is resized and converted like the training data.")
        return
    try:
        pictures = reconstruction_png(model_key, model, upload.getvalue(), choice)
    except VaegenError as exc:
        st.error(str(exc))
        return
    each = " under each class" if choice == gallery.ALL_CLASSES else ""
    show(pictures, f"{upload.name} as the model sees it ({gallery.upload_fit(upload.getvalue(), model)}), "
         f"and its reconstruction{each}", stem, choice, "reconstruction")


@st.cache_data(max_entries=8, show_spinner="encoding the images, drawing the maps")
def latent_pngs(model_key: tuple, _model) -> list[tuple[str, str, bytes]]:
    return gallery.latent_view(_model)


def latent_tab(model, model_key: tuple, stem: str, choice: str | None) -> None:
    if st.button("Show the latent space", key="latents"):  # seconds of encoding and t-SNE: only when asked
        st.session_state["latents_of"] = model_key[0]
    if st.session_state.get("latents_of") != model_key[0]:
        st.caption("KL per latent dimension and the active units, traversals of the most used dimensions, and a "
                   "PCA and t-SNE map of the codes, on the validation images the model was trained with.")
        return
    try:
        pictures = latent_pngs(model_key, model)
    except VaegenError as exc:
        st.error(str(exc))
        return
    for name, caption, png in pictures:
        st.image(png, alt=caption, output_format="PNG")
        st.caption(caption)
        st.download_button("Download PNG", png, file_name=f"{stem}-{name}", mime="image/png", key=f"download_{name}",
                           on_click="ignore")


# ttl: a model still training writes new rows and a new best while the page is open
@st.cache_data(ttl=30, max_entries=8, show_spinner="comparing")
def cached_comparison(root: str, names: tuple[str, ...]) -> gallery.CompareView:
    return gallery.compare_view(Path(root), list(names))


def compare_page(root: Path, runs: list[gallery.Run]) -> None:
    """Several models side by side, as `vaegen compare` shows them: the table, the protocol notes, curves, samples."""
    names = [run.name for run in runs if run.error is None]
    chosen = st.sidebar.multiselect("models to compare", names, default=names[:2], key="compare_runs")
    st.title("Compare models")
    if len(chosen) < 2:
        st.info("Pick two models or more in the sidebar to compare them.")
        return
    try:
        view = cached_comparison(str(root), tuple(chosen))
    except VaegenError as exc:
        st.error(str(exc))
        return
    st.dataframe({label: [row[index] for row in view.rows] for index, label in enumerate(view.header)}, hide_index=True)
    for note in view.notes:
        (st.warning if note.startswith("⚠") else st.caption)(note)
    for caption, png in view.pictures:
        st.image(png, alt=caption, output_format="PNG")
        st.caption(caption)


def main() -> None:
    st.set_page_config(page_title="vaegen gallery", layout="wide")
    root = gallery.checkpoint_root(sys.argv[1:], Path(__file__).resolve().parent / "best_models")
    st.sidebar.title("vaegen gallery")
    st.sidebar.caption(f"models under `{root}`")
    runs = gallery.find_runs(root)
    if not runs:
        st.title("vaegen gallery")
        # a missing root is most likely a mistyped --best-dir: a problem, not a fresh start
        (st.info if root.is_dir() else st.warning)(gallery.how_to_train(root))
        return
    if st.sidebar.toggle("Compare models", key="compare"):
        return compare_page(root, runs)
    run = pick_run(root, runs)
    st.title(run.name)
    if run.error is not None:
        st.error(run.error)
        return
    try:
        model_key = (str(run.path), (run.path / gallery.WEIGHTS).stat().st_mtime_ns)
        model = cached_model(*model_key)
        sampling = sampler_controls(model, model_key[0])
        if sampling:  # pictures are cached per settings too
            model, model_key = cached_model(*model_key, sampling), (*model_key, sampling)
    except (VaegenError, OSError) as exc:  # OSError: the folder vanished or became unreadable since the listing
        st.error(str(exc))
        return
    choice = st.selectbox("class", gallery.class_choices(model), key="class") if model.is_conditional else None
    stem = run.path.name if run.name == "." else run.name.replace("/", "_")  # download file names
    if not gallery.reconstructs(model):  # a family without an encoder and decoder only generates
        return generate_tab(model, model_key, stem, choice)
    tabs = st.tabs(["Generate", "Interpolate", "Reconstruct", "Latent space"])
    for tab, draw in zip(tabs, [generate_tab, interpolate_tab, reconstruct_tab, latent_tab]):
        with tab:
            draw(model, model_key, stem, choice)


main()

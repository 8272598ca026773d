"""`vaegen data`: build the training folders (one subfolder per class) from public dumps.

Files are copied (or hard-linked) as `{source class}__{split or genre}__{original name}`, in sorted order; nothing is
ever overwritten: `out` must be new or empty.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import os
import shutil
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from vaegen.errors import DataError, plural

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

FRUIT360_CLASSES = {
    "Golden": ("Apple Golden 1", "Apple Golden 2", "Apple Golden 3"),
    "Golden-Red": ("Apple Red Yellow 1", "Apple Red Yellow 2"),
    "Red": ("Apple Red 1", "Apple Red 2", "Apple Red 3"),
}
FRUIT360_SPLITS = {"training": "train", "test": "test"}
FRUIT360_FIX = ('Download Fruit-360 from Kaggle ("moltean/fruits") or GitHub ("Horea94/Fruit-Images-Dataset"), '
                "extract it, and pass the folder that contains Training/ and Test/.")

WIKIART_BY = (None, "genre")
WIKIART_FIX = ("Download the WikiArt dump distributed with ArtGAN (https://github.com/cs-chan/ArtGAN), extract it, "
               "and pass the folder that holds the style folders (Impressionism/, Realism/, ...).")
WIKIART_GENRES = ["landscape", "genre_painting", "portrait", "cityscape"]
WIKIART_CSVS = ("genre_train.csv", "genre_val.csv")
WIKIART_CLASS_FILE = "genre_class.txt"

Job = tuple[Path, Path]  # (source file, destination file)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _require_src(src: Path, what: str, fix: str) -> None:
    if not src.is_dir():
        raise DataError(f"The {what} source folder {src} does not exist or is not a folder. {fix}")


def _require_empty(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; vaegen data builds a folder of class subfolders there. "
                        f"Choose a new or empty folder for --out (or delete the file {out} yourself).")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"The output folder {out} already exists and is not empty; vaegen data never overwrites files. "
                        f"Choose an empty or new folder for --out (or delete {out} yourself).")


def _write_all(jobs: list[Job], counts: dict[str, int], out: Path, link: bool, desc: str, about: str) -> None:
    """Copy (or hard-link) every job, then write out/SOURCES.md: `about`, then the counts per class."""
    from vaegen.checkpoint import make_output_folder  # it imports torch: only once there is something to write

    make_output_folder(out, "--out")
    for src, dest in tqdm(jobs, desc=desc, unit="img"):
        try:
            dest.parent.mkdir(exist_ok=True)
            if link:
                with contextlib.suppress(OSError):  # across devices or without hard links, a copy still works
                    os.link(src, dest)
                    continue
            shutil.copy2(src, dest)
        except OSError as exc:
            raise DataError(f"Could not copy {src} to {dest}: {exc.strerror}. Fix the cause (disk space, permissions), "
                            f"delete the partly built {out}, and run vaegen data again.") from exc
    rows = "".join(f"| {name} | {n} |\n" for name, n in counts.items())
    table = f"| class | images |\n|---|---|\n{rows}| total | {sum(counts.values())} |\n"
    (out / "SOURCES.md").write_text(f"# Sources\n\n{about}## Counts\n\n{table}", encoding="utf-8")


def _fruit360_splits(src: Path) -> dict[str, Path]:
    """The Training/Test folders under src, keyed "train"/"test"; all must share one parent."""
    found: dict[Path, dict[str, Path]] = {}
    for root, dirs, _ in os.walk(src):
        for name in sorted(dirs):
            if name.lower() in FRUIT360_SPLITS:
                found.setdefault(Path(root), {})[FRUIT360_SPLITS[name.lower()]] = Path(root) / name
        # walk neither into a split (~100k images) nor into hidden folders
        dirs[:] = sorted(name for name in dirs if name.lower() not in FRUIT360_SPLITS and not name.startswith("."))
    if len(found) > 1:  # e.g. Kaggle ships 100x100 and original-size copies side by side; mixing them would be wrong
        raise DataError(f"Found Fruit-360 Training/Test folders in several places under {src}: "
                        f"{', '.join(str(p) for p in sorted(found))}. Pass the one folder you want (the 100x100 "
                        f"release) as the source.")
    return next(iter(found.values()), {})


def build_fruit360(src: Path, out: Path, link: bool = False) -> dict[str, int]:
    """Build out/{Golden,Golden-Red,Red}/ from an extracted Fruit-360 tree; return counts per class."""
    src, out = Path(src), Path(out)
    _require_src(src, "Fruit-360", FRUIT360_FIX)
    splits = _fruit360_splits(src)
    present = {name for folder in splits.values() for name in os.listdir(folder) if (folder / name).is_dir()}
    missing_all = {t: s for t, s in FRUIT360_CLASSES.items() if not any(name in present for name in s)}
    if missing_all:
        looked_for = "; ".join(f"{t}: {', '.join(repr(s) for s in sources)}" for t, sources in missing_all.items())
        where = ", ".join(str(p) for p in splits.values()) or "no Training/ or Test/ folder was found"
        raise DataError(f"No Fruit-360 source folder found for class(es) {', '.join(missing_all)} under {src} "
                        f"(looked for {looked_for}; searched: {where}). {FRUIT360_FIX}")
    missing = [name for sources in FRUIT360_CLASSES.values() for name in sources if name not in present]
    if missing:
        warnings.warn(f"Fruit-360 folder(s) missing under {src} (older releases lack some): {', '.join(missing)}; "
                      f"building the classes from the folders that exist.", stacklevel=2)
    _require_empty(out)

    looked = {target: [(split, splits[split] / source) for source in sources for split in ("train", "test")
                       if split in splits and (splits[split] / source).is_dir()]
              for target, sources in FRUIT360_CLASSES.items()}
    per_class = {target: [(img, out / target / f"{folder.name.replace(' ', '_')}__{split}__{img.name}")
                          for split, folder in folders for img in _images(folder)]
                 for target, folders in looked.items()}
    counts = {target: len(jobs) for target, jobs in per_class.items()}
    # a dataset silently missing a class would train a model on the wrong task
    empty = [t for t, n in counts.items() if n == 0]
    if empty:
        detail = "; ".join(f"{t} (looked in {', '.join(str(folder) for _, folder in looked[t])})" for t in empty)
        raise DataError(f"No Fruit-360 images found for class(es) {detail}: those folders exist but hold no image "
                        f"files ({', '.join(sorted(IMAGE_SUFFIXES))}), so the dataset would lack the class. The "
                        f"download is probably incompletely extracted. {FRUIT360_FIX}")
    mapping = "\n".join(f"- {t}: {', '.join(s)}" for t, s in FRUIT360_CLASSES.items())
    about = ("Images from Fruit-360 by Horea Muresan and Mihai Oltean (\"Fruit recognition from images using deep "
             "learning\", Acta Univ. Sapientiae, Informatica 10(1), 2018), https://www.kaggle.com/datasets/moltean/"
             "fruits and https://github.com/Horea94/Fruit-Images-Dataset.\n\nLicence: CC BY-SA 4.0 (Kaggle release); "
             "MIT (GitHub repository). Attribute the authors when sharing.\n\n"
             f"Built by `vaegen data` from {src}. File names are `<source class>__<train|test>__<original name>`; "
             f"Training and Test images are merged.\n\n## Class mapping\n\n{mapping}\n\n"
             + (f"Missing source folders: {', '.join(missing)}.\n\n" if missing else ""))
    jobs = [job for class_jobs in per_class.values() for job in class_jobs]
    _write_all(jobs, counts, out, link, "Fruit-360 apples", about)
    return counts


def build_wikiart(src: Path, out: Path, style: str = "Impressionism", by: str | None = None,
                  genres: list[str] | None = None, link: bool = False) -> dict[str, int]:
    """Build out/<style lowercased>/ (by=None) or out/<genre>/ (by="genre") from the ArtGAN WikiArt dump."""
    src, out = Path(src), Path(out)
    if by not in WIKIART_BY:
        raise DataError(f"--by {by!r} is not supported. Omit --by (one class for the whole style) or use --by genre.")
    if genres is not None and by is None:  # without --by the whole style is one class: a filter would be dropped
        raise DataError(f"--genres {','.join(genres)} only applies with --by genre. Add --by genre to build one "
                        f"folder per genre, or drop --genres to take every image of {style} as one class.")
    _require_src(src, "WikiArt", WIKIART_FIX)
    style_dir = _style_folder(src, style)
    missing: list[str] = []
    if by is None:
        jobs = [(img, out / style.lower() / f"{style}__all__{img.name}") for img in _images(style_dir)]
        counts = {style.lower(): len(jobs)}
        selection = f"every image in {style}/"
    else:
        jobs, counts, missing, selection = _genre_jobs(src, out, style, genres)
    if not jobs:
        raise DataError(f"No images selected from {src} ({selection}). Check that the dump is fully extracted"
                        + (", or choose other --genres." if by else " and that the style folder holds images."))
    _require_empty(out)
    about = ("Images from WikiArt (https://www.wikiart.org), via the dump distributed with ArtGAN "
             "(https://github.com/cs-chan/ArtGAN). The paintings' rights belong to their holders; the images are for "
             f"non-commercial research use only.\n\nBuilt by `vaegen data` from {src}: {selection}. "
             "File names are `<style>__<genre or all>__<original name>`.\n\n"
             + (f"Listed but missing from the dump, skipped: {plural(len(missing), 'image')}.\n\n" if missing else ""))
    _write_all(jobs, counts, out, link, f"WikiArt {style}", about)
    return counts


def _style_folder(src: Path, style: str) -> Path:
    """src/<style>, or the error that lists the style folders there (with a did-you-mean)."""
    style_dir = src / style
    if style_dir.is_dir():
        return style_dir
    styles = sorted(p.name for p in src.iterdir()
                    if p.is_dir() and p.name != "wikiart_csv" and not p.name.startswith("."))
    close = difflib.get_close_matches(style, styles, n=1)
    hint = f" Did you mean --style {close[0]}?" if close else ""
    fix = "Pass one of them as --style (names are case-sensitive)." if styles else WIKIART_FIX
    raise DataError(f"Style folder {style_dir} does not exist. Style folders in {src}: "
                    f"{', '.join(styles) or 'none'}.{hint} {fix}")


def _genre_jobs(src: Path, out: Path, style: str, genres: list[str] | None
                ) -> tuple[list[Job], dict[str, int], list[str], str]:
    """--by genre: (jobs into out/<genre>/, images per genre, listed images missing from the dump, what was chosen)."""
    class_file, csvs = _find_genre_files(src)
    classes = _read_genre_classes(class_file)
    wanted = list(dict.fromkeys(genres if genres is not None else WIKIART_GENRES))
    unknown = [g for g in wanted if g not in classes.values()]
    if unknown or not wanted:
        raise DataError(f"Unknown genre(s) {', '.join(unknown) or '(none given)'}. Valid genres (from {class_file}): "
                        f"{', '.join(classes[i] for i in sorted(classes))}.")
    rows = sorted({row for path in csvs for row in _read_genre_rows(path, style, classes) if row[1] in wanted},
                  key=lambda row: (row[1], row[0]))  # by genre, then path
    exists = {rel: (src / rel).is_file() for rel, _ in rows}
    missing = [rel for rel, _ in rows if not exists[rel]]
    jobs = [(src / rel, out / genre / f"{style}__{genre}__{Path(rel).name}") for rel, genre in rows if exists[rel]]
    counts = {genre: sum(exists[rel] for rel, of in rows if of == genre) for genre in wanted}
    if missing:
        warnings.warn(f"{plural(len(missing), 'image')} listed in the genre CSVs "
                      f"{'is' if len(missing) == 1 else 'are'} missing under {src} (e.g. {missing[0]}); skipped.",
                      stacklevel=3)
    selection = f"rows of {', '.join(p.name for p in csvs)} under {style}/ with genre {', '.join(wanted)}"
    return jobs, counts, missing, selection


def _find_genre_files(src: Path) -> tuple[Path, list[Path]]:
    """genre_class.txt and the genre CSVs, looked for in src and src/wikiart_csv."""
    dirs = (src, src / "wikiart_csv")
    names = (WIKIART_CLASS_FILE, *WIKIART_CSVS)
    found = {name: next((d / name for d in dirs if (d / name).is_file()), None) for name in names}
    class_file, csvs = found.pop(WIKIART_CLASS_FILE), [p for p in found.values() if p is not None]
    if class_file is None or not csvs:
        looked = ", ".join(str(d / n) for n in names for d in dirs)
        raise DataError(f"--by genre needs {WIKIART_CLASS_FILE} and {' / '.join(WIKIART_CSVS)} from the ArtGAN WikiArt "
                        f"dump, but they were not found (looked for {looked}). Put the wikiart_csv folder from "
                        f"https://github.com/cs-chan/ArtGAN into {src}, or omit --by to take every image of the style "
                        f"as one class.")
    if len(csvs) < len(WIKIART_CSVS):
        lacking = [name for name, path in found.items() if path is None]
        warnings.warn(f"{', '.join(lacking)} not found in {src} or its wikiart_csv/; using {csvs[0]} alone.",
                      stacklevel=3)
    return class_file, csvs


def _read_utf8(path: Path, layout: str) -> str:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text, so it is not the {path.name} of the ArtGAN WikiArt dump "
                        f"({layout}). Restore it from the wikiart_csv folder of https://github.com/cs-chan/ArtGAN."
                        ) from None


def _read_genre_classes(path: Path) -> dict[int, str]:
    classes: dict[int, str] = {}
    for lineno, line in enumerate(_read_utf8(path, "'<index> <genre>' lines").splitlines(), 1):
        if not line.strip():
            continue
        index, _, name = line.strip().partition(" ")
        if not index.isdigit() or not name.strip():
            raise DataError(f"{path}:{lineno} should read '<index> <genre>' but reads {line!r}. Restore the file from "
                            f"the dump.")
        classes[int(index)] = name.strip()
    return classes


def _read_genre_rows(path: Path, style: str, classes: dict[int, str]) -> list[tuple[str, str]]:
    """(relative path, genre name) for the rows of one CSV whose path lies in the style folder."""
    rows = []
    text = _read_utf8(path, "'<Style>/<file>,<genre index>' rows")
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if not row or not row[0].strip():
            continue
        label = row[1].strip() if len(row) > 1 else ""
        if not (label.isdigit() and int(label) in classes):
            if lineno == 1:
                continue  # tolerate a header line
            raise DataError(f"{path}:{lineno} should read '<Style>/<file>,<genre index>' with an index from "
                            f"{WIKIART_CLASS_FILE} but reads {','.join(row)!r}. Restore the file from the dump.")
        rel = row[0].strip().replace("\\", "/")
        if ".." in rel.split("/"):  # the dump never climbs out of a style folder: a row that does reads outside --src
            raise DataError(f"{path}:{lineno} points outside the dataset folder with '..': {','.join(row)!r}. "
                            f"The ArtGAN dump has no such rows; restore {path.name} from the dump.")
        if rel.startswith(f"{style}/"):
            rows.append((rel, classes[int(label)]))
    return rows

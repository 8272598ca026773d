"""`vaegen data`: the Fruit-360 apples set and the WikiArt impressionism set, on tiny fake dumps."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from vaegen.data.prepare import build_fruit360, build_wikiart
from vaegen.errors import DataError

ALL_APPLES = [
    "Apple Golden 1", "Apple Golden 2", "Apple Golden 3",
    "Apple Red Yellow 1", "Apple Red Yellow 2",
    "Apple Red 1", "Apple Red 2", "Apple Red 3",
]
GENRE_CLASSES = """0 abstract_painting
1 cityscape
2 genre_painting
3 illustration
4 landscape
5 nude_painting
6 portrait
7 religious_painting
8 sketch_and_study
9 still_life
"""


def jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def fruit(tmp_path: Path) -> Path:
    """Kaggle-like nesting: src/fruits-360/{Training,Test}/<class>/; one train + one test image per class."""
    root = tmp_path / "dump" / "fruits-360"
    for cls in [*ALL_APPLES, "Banana"]:
        jpeg(root / "Training" / cls / "r_1_100.jpg")
        jpeg(root / "Test" / cls / "5_100.jpg")
    jpeg(root / "Test-multiple_fruits" / "Apple Red 1" / "x.jpg")  # not a split: ignored
    return tmp_path / "dump"


def test_fruit360_names_counts_and_sources(fruit: Path, tmp_path: Path) -> None:
    out = tmp_path / "apples"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every source present: no warning
        counts = build_fruit360(fruit, out)
    assert counts == {"Golden": 6, "Golden-Red": 4, "Red": 6}
    assert names(out) == ["Golden", "Golden-Red", "Red", "SOURCES.md"]
    assert names(out / "Golden-Red") == [
        "Apple_Red_Yellow_1__test__5_100.jpg",
        "Apple_Red_Yellow_1__train__r_1_100.jpg",
        "Apple_Red_Yellow_2__test__5_100.jpg",
        "Apple_Red_Yellow_2__train__r_1_100.jpg",
    ]
    assert "Apple_Red_2__train__r_1_100.jpg" in names(out / "Red")
    assert not any("Yellow" in n or "Golden" in n for n in names(out / "Red"))
    every = [n for d in ("Golden", "Golden-Red", "Red") for n in names(out / d)]
    assert not any("Banana" in n or n.endswith("__x.jpg") for n in every)
    sources = (out / "SOURCES.md").read_text()
    assert "Muresan" in sources and "CC BY-SA 4.0" in sources and "MIT" in sources
    assert "| Golden-Red | 4 |" in sources and "| total | 16 |" in sources
    with Image.open(out / "Red" / "Apple_Red_1__test__5_100.jpg") as im:
        assert im.size == (8, 8)


def test_fruit360_missing_class_names_the_folders(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for cls in ["Apple Golden 1", "Apple Red 1", "Banana"]:
        jpeg(root / "Training" / cls / "1_100.jpg")
    with pytest.raises(DataError) as err:
        build_fruit360(root, tmp_path / "out")
    msg = str(err.value)
    assert "'Apple Red Yellow 1'" in msg and "'Apple Red Yellow 2'" in msg and "Golden-Red" in msg
    assert str(root) in msg and "moltean/fruits" in msg and "Horea94/Fruit-Images-Dataset" in msg
    assert "'Apple Golden 1'" not in msg
    assert not (tmp_path / "out").exists()


def test_fruit360_no_dataset_and_missing_src(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Training/ or Test/ folder"):
        build_fruit360(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        build_fruit360(tmp_path / "nowhere", tmp_path / "out")


def test_fruit360_partial_missing_warns_and_continues(fruit: Path, tmp_path: Path) -> None:
    for split in ("Training", "Test"):
        folder = fruit / "fruits-360" / split / "Apple Red Yellow 2"
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    with pytest.warns(UserWarning, match="Apple Red Yellow 2"):
        counts = build_fruit360(fruit, tmp_path / "out")
    assert counts == {"Golden": 6, "Golden-Red": 2, "Red": 6}


def test_fruit360_refuses_non_empty_out(fruit: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_fruit360(fruit, out)
    assert names(out) == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert sum(build_fruit360(fruit, out).values()) == 16  # an existing empty folder is fine


def test_fruit360_link_makes_hard_links(fruit: Path, tmp_path: Path) -> None:
    out = tmp_path / "linked"
    build_fruit360(fruit, out, link=True)
    src = fruit / "fruits-360" / "Training" / "Apple Red 3" / "r_1_100.jpg"
    dest = out / "Red" / "Apple_Red_3__train__r_1_100.jpg"
    assert os.stat(src).st_ino == os.stat(dest).st_ino
    copied = tmp_path / "copied"
    build_fruit360(fruit, copied)
    assert os.stat(src).st_ino != os.stat(copied / "Red" / dest.name).st_ino


@pytest.fixture
def wikiart(tmp_path: Path) -> Path:
    src = tmp_path / "wikiart"
    for name in ["claude-monet_a.jpg", "claude-monet_b.jpg", "edgar-degas_c.jpg", "pissarro_d.jpg"]:
        jpeg(src / "Impressionism" / name)
    jpeg(src / "Realism" / "courbet_e.jpg")
    csvs = src / "wikiart_csv"
    csvs.mkdir()
    (csvs / "genre_class.txt").write_text(GENRE_CLASSES)
    (csvs / "genre_train.csv").write_text(
        "Impressionism/claude-monet_a.jpg,4\n"
        "Impressionism/claude-monet_b.jpg,1\n"
        "Impressionism/edgar-degas_c.jpg,7\n"  # religious_painting: not wanted by default
        "Realism/courbet_e.jpg,4\n"  # other style
    )
    (csvs / "genre_val.csv").write_text("Impressionism/pissarro_d.jpg,6\nImpressionism/gone.jpg,4\n")
    return src


def test_wikiart_whole_style(wikiart: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build_wikiart(wikiart, out) == {"impressionism": 4}
    assert names(out) == ["SOURCES.md", "impressionism"]
    assert names(out / "impressionism")[0] == "Impressionism__all__claude-monet_a.jpg"
    assert "Impressionism__all__pissarro_d.jpg" in names(out / "impressionism")
    sources = (out / "SOURCES.md").read_text()
    assert "ArtGAN" in sources and "non-commercial" in sources and "| impressionism | 4 |" in sources


def test_wikiart_by_genre_maps_and_filters(wikiart: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="1 image.*gone.jpg"):
        counts = build_wikiart(wikiart, out, by="genre")
    assert counts == {"landscape": 1, "genre_painting": 0, "portrait": 1, "cityscape": 1}
    assert names(out) == ["SOURCES.md", "cityscape", "landscape", "portrait"]
    assert names(out / "landscape") == ["Impressionism__landscape__claude-monet_a.jpg"]
    assert names(out / "cityscape") == ["Impressionism__cityscape__claude-monet_b.jpg"]
    assert names(out / "portrait") == ["Impressionism__portrait__pissarro_d.jpg"]


def test_wikiart_genres_argument_and_csvs_at_top_level(wikiart: Path, tmp_path: Path) -> None:
    for f in (wikiart / "wikiart_csv").iterdir():
        f.rename(wikiart / f.name)
    counts = build_wikiart(wikiart, tmp_path / "out", by="genre", genres=["religious_painting"])
    assert counts == {"religious_painting": 1}
    assert names(tmp_path / "out" / "religious_painting") == ["Impressionism__religious_painting__edgar-degas_c.jpg"]


def test_wikiart_unknown_genre_lists_valid_ones(wikiart: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_wikiart(wikiart, tmp_path / "out", by="genre", genres=["landscape", "seascape"])
    msg = str(err.value)
    assert "seascape" in msg and "still_life" in msg and "genre_painting" in msg


def test_wikiart_missing_csv_explains(wikiart: Path, tmp_path: Path) -> None:
    for f in (wikiart / "wikiart_csv").glob("*.csv"):
        f.unlink()
    with pytest.raises(DataError) as err:
        build_wikiart(wikiart, tmp_path / "out", by="genre")
    msg = str(err.value)
    assert "genre_train.csv" in msg and "genre_val.csv" in msg and str(wikiart / "wikiart_csv") in msg
    assert "omit --by" in msg
    assert build_wikiart(wikiart, tmp_path / "out") == {"impressionism": 4}  # without --by it still works


def test_wikiart_unknown_style_suggests_closest(wikiart: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_wikiart(wikiart, tmp_path / "out", style="Impresionism")
    msg = str(err.value)
    assert "Did you mean --style Impressionism?" in msg
    assert "Impressionism, Realism." in msg  # the existing styles, without wikiart_csv


def test_wikiart_bad_by_empty_style_and_non_empty_out(wikiart: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'artist'.*--by genre"):
        build_wikiart(wikiart, tmp_path / "out", by="artist")
    (wikiart / "Cubism").mkdir()
    with pytest.raises(DataError, match="No images selected"):
        build_wikiart(wikiart, tmp_path / "out", style="Cubism")
    with pytest.raises(DataError, match="No images selected"):
        build_wikiart(wikiart, tmp_path / "out", by="genre", genres=["sketch_and_study"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.jpg").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        build_wikiart(wikiart, tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        build_wikiart(tmp_path / "missing", tmp_path / "out2")


def test_cli_builds_a_folder_vaegen_can_train_on(fruit: Path, tmp_path: Path, capsys) -> None:
    from vaegen.apps.cli import main
    from vaegen.data.dataset import scan_folder

    out = tmp_path / "built"
    assert main(["data", "fruit360", "--src", str(fruit), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"built {out} (16 images)" in printed and "Golden-Red" in printed
    index = scan_folder(out)
    assert index.classes == ["Golden", "Golden-Red", "Red"] and len(index.files) == 16
    assert main(["data", "fruit360", "--src", str(fruit), "--out", str(out)]) == 2  # never overwrites


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from vaegen.apps.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1  # one paragraph, no traceback
    return code, errors[0]


def test_fruit360_out_under_a_file_or_being_a_file(fruit: Path, tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    code, msg = run_cli(["data", "fruit360", "--src", str(fruit), "--out", str(afile / "sub")], capsys)
    assert code == 2
    assert f"cannot create the folder {afile / 'sub'}: {afile} is a file, not a folder" in msg
    assert "Point --out at a folder you can write to (--out DIR)" in msg
    code, msg = run_cli(["data", "fruit360", "--src", str(fruit), "--out", str(afile)], capsys)
    assert code == 2
    assert f"--out {afile} is a file, not a folder" in msg and "not empty" not in msg
    assert afile.read_text() == ""


def test_fruit360_copy_failure_is_one_paragraph(fruit: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    def full_disk(src, dest):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr("vaegen.data.prepare.shutil.copy2", full_disk)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"Could not copy .*: No space left on device\. .*delete the partly built"):
        build_fruit360(fruit, out)


def test_fruit360_class_whose_folders_hold_no_images(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for cls in ALL_APPLES:
        (root / "Test" / cls).mkdir(parents=True)
        (root / "Training" / cls).mkdir(parents=True)
    jpeg(root / "Training" / "Apple Golden 1" / "1_100.jpg")
    jpeg(root / "Training" / "Apple Red 2" / "1_100.jpg")
    (root / "Training" / "Apple Red Yellow 1" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        build_fruit360(root, tmp_path / "out")
    msg = str(err.value)
    assert "No Fruit-360 images found for class(es) Golden-Red (looked in " in msg
    assert str(root / "Training" / "Apple Red Yellow 1") in msg and str(root / "Test" / "Apple Red Yellow 2") in msg
    assert "Apple Golden" not in msg and "moltean/fruits" in msg
    assert not (tmp_path / "out").exists()


def test_wikiart_genre_files_not_utf8(wikiart: Path, tmp_path: Path) -> None:
    csvs = wikiart / "wikiart_csv"
    (csvs / "genre_train.csv").write_bytes(b"Impressionism/claude-monet_a\xe9.jpg,4\n")
    with pytest.raises(DataError) as err:
        build_wikiart(wikiart, tmp_path / "out", by="genre")
    assert str(err.value).startswith(f"{csvs / 'genre_train.csv'} is not UTF-8 text")
    assert "'<Style>/<file>,<genre index>' rows" in str(err.value) and "cs-chan/ArtGAN" in str(err.value)
    (csvs / "genre_class.txt").write_bytes(b"0 landsc\xe9pe\n")
    with pytest.raises(DataError) as err:
        build_wikiart(wikiart, tmp_path / "out", by="genre")
    assert str(err.value).startswith(f"{csvs / 'genre_class.txt'} is not UTF-8 text")
    assert "'<index> <genre>' lines" in str(err.value)


def test_wikiart_genres_needs_by_genre(wikiart: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, msg = run_cli(["data", "wikiart", "--src", str(wikiart), "--out", str(out), "--genres", "portrait"], capsys)
    assert code == 2
    assert "--genres portrait only applies with --by genre. Add --by genre" in msg and "drop --genres" in msg
    assert not out.exists()


def test_wikiart_empty_genres_is_refused_not_read_as_every_genre(wikiart: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, msg = run_cli(["data", "wikiart", "--src", str(wikiart), "--out", str(out), "--by", "genre", "--genres", ""], capsys)
    assert code == 2 and "Unknown genre(s) (none given)" in msg and not out.exists()


def test_the_build_summary_counts_in_words(tmp_path: Path, capsys, monkeypatch) -> None:
    import vaegen.data.prepare
    from vaegen.apps.cli import main

    monkeypatch.setattr(vaegen.data.prepare, "build_fruit360", lambda src, out, link: {"Golden": 1, "Red": 2})
    assert main(["data", "fruit360", "--src", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Golden", "1", "image"] and lines[1].split() == ["Red", "2", "images"]
    assert "(3 images); train on it" in lines[2]


def test_wikiart_csv_row_outside_src_is_refused(wikiart: Path, tmp_path: Path) -> None:
    jpeg(tmp_path / "secret_outside.jpg")
    with (wikiart / "wikiart_csv" / "genre_train.csv").open("a") as f:
        f.write("Impressionism/../../secret_outside.jpg,6\n")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        build_wikiart(wikiart, out, by="genre")
    msg = str(err.value)
    assert f"{wikiart / 'wikiart_csv' / 'genre_train.csv'}:5 points outside the dataset folder with '..'" in msg
    assert "'Impressionism/../../secret_outside.jpg,6'" in msg and "restore genre_train.csv" in msg
    assert not out.exists()


def test_wikiart_one_missing_image_is_singular(wikiart: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"^1 image listed in the genre CSVs is missing under .*gone\.jpg"):
        build_wikiart(wikiart, tmp_path / "out", by="genre")
    assert "skipped: 1 image.\n" in (tmp_path / "out" / "SOURCES.md").read_text()

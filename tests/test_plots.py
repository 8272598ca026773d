"""vaegen.plots: how big the pictures written to disk are, how many samples each class's block holds, and that
class names are drawn in letters."""

from __future__ import annotations

import numpy as np
import torch

from vaegen.plots import class_blocks, for_viewing, image_grid, samples_per_class, to_pil, view_scale


def test_small_tiles_are_enlarged_by_a_whole_factor_to_at_most_96_px():
    def scale(height: int, width: int | None = None) -> int:
        return view_scale(torch.zeros(1, 3, height, width or height))

    assert [scale(size) for size in (8, 16, 20, 32, 48)] == [12, 6, 4, 3, 2]  # tiles of 96, 96, 80, 96, 96 px
    assert [scale(size) for size in (64, 96, 128)] == [1, 1, 1]  # 64 px and up: as they are
    assert scale(16, 64) == 1  # the longer side counts: a 16x64 tile is not made 384 px wide
    images = torch.rand(4, 3, 8, 8)
    native = np.asarray(to_pil(image_grid(images, nrow=2)))
    big = np.asarray(for_viewing(image_grid(images, nrow=2), images))
    assert np.array_equal(big, native.repeat(12, axis=0).repeat(12, axis=1))  # nearest neighbour: whole pixels, no blur


def test_samples_per_class_is_the_same_for_every_class_in_whole_rows():
    assert samples_per_class(64, 3) == 16  # 21 each would leave a ragged third row: two rows of 8
    assert samples_per_class(12, 3) == 4 and samples_per_class(16, 3) == 5  # one row: no rounding
    assert samples_per_class(64, 1) == 64 and samples_per_class(2, 3) == 1
    assert all(samples_per_class(total, classes) <= max(1, total // classes) for total in range(1, 300) for classes in range(1, 9))


def test_class_blocks_of_grayscale_images_stay_grayscale_and_are_labelled_at_scale():
    images = torch.rand(6, 1, 16, 16)
    page = class_blocks(images, ["a", "b"])
    assert page.mode == "L" and page.height == 6 * (2 * 18 + 2) and page.width > 6 * (3 * 18 + 2)
    margin = page.width - 6 * (3 * 18 + 2)
    text = np.asarray(page)[:, :margin] < 128
    assert text[: 6 * 18].any() and text[6 * 18 :].any()  # each block's name, drawn in its margin


def test_class_names_with_line_breaks_are_drawn_on_one_line():
    names = ["a\nb", "c\x85d", "e\u2029f", "g\r\nh"]  # each used to stop Pillow's text layout (raqm_layout() failed)
    images = torch.rand(len(names), 3, 16, 16)
    assert np.array_equal(np.asarray(class_blocks(images, names)), np.asarray(class_blocks(images, ["a b", "c d", "e f", "g h"])))


def test_class_names_outside_ascii_are_drawn_as_letters_not_as_the_missing_glyph_box():
    # "Äpfel grün" was drawn "□pfel gr□n": Pillow's default font has ASCII only; U+E000 is private use, in no font
    names = ["Ä", "ü", "β", "я", "\ue000"]
    page = class_blocks(torch.rand(len(names), 1, 16, 16), names)
    margin = page.width - 6 * 16
    ink = np.asarray(page)[:, :margin] < 128

    def glyph(rows: np.ndarray) -> np.ndarray:  # the label's ink, cropped to its bounding box
        ys, xs = np.nonzero(rows)
        return rows[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]

    box, *letters = reversed([glyph(rows) for rows in np.array_split(ink, len(names))])
    assert all(not np.array_equal(letter, box) for letter in letters), "a letter was drawn as the missing-glyph box"

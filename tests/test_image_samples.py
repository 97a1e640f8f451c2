"""Built-in photographs and the user's image folder (edgeport/image_samples.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage", reason="the built-in images are scikit-image's photographs")

from PIL import Image

from edgeport import image_samples
from edgeport.errors import BadInputError
from edgeport.image_samples import (
    Split,
    builtin_images,
    crop_plan,
    describe_builtin,
    labelled_heldout_crops,
    labelled_training_crops,
    load_image_folder,
    photograph_labels,
    split_user_images,
)


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_defaults_are_rgb_and_sized_as_documented() -> None:
    calibration = builtin_images("calibration")
    validation = builtin_images("validation")
    assert (len(calibration), len(validation)) == (32, 64)
    assert {image.mode for image in [*calibration, *validation]} == {"RGB"}
    assert len(builtin_images("training", 5)) == 5
    with pytest.raises(ValueError, match="count"):
        builtin_images("training")


def test_two_calls_give_byte_identical_images() -> None:
    for split in ("calibration", "validation"):
        first = [_digest(image) for image in builtin_images(split)]
        second = [_digest(image) for image in builtin_images(split)]
        assert first == second
    first_pairs = [(_digest(i), label) for i, label in labelled_training_crops(12, seed=3)]
    second_pairs = [(_digest(i), label) for i, label in labelled_training_crops(12, seed=3)]
    assert first_pairs == second_pairs
    other_seed = [_digest(i) for i, _ in labelled_training_crops(12, seed=4)]
    assert {d for d, _ in first_pairs}.isdisjoint(other_seed)


def test_a_fresh_process_draws_the_same_crops() -> None:
    # Guards against anything process-dependent (hash randomisation, dict order).
    code = (
        "from edgeport.image_samples import builtin_images\n"
        "import hashlib\n"
        "h = hashlib.sha256()\n"
        "for image in builtin_images('calibration', 20):\n"
        "    h.update(image.tobytes())\n"
        "print(h.hexdigest())\n"
    )
    here = hashlib.sha256()
    for image in builtin_images("calibration", 20):
        here.update(image.tobytes())
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == here.hexdigest()


def test_more_crops_extend_fewer_without_changing_them() -> None:
    few = [_digest(image) for image in builtin_images("validation", 10)]
    many = [_digest(image) for image in builtin_images("validation", 40)]
    assert many[:10] == few


def test_crop_boxes_of_different_splits_never_overlap() -> None:
    photographs = image_samples.available_photographs()
    plans = {
        "calibration": crop_plan("calibration", 200, photographs),
        "validation": crop_plan("validation", 200, photographs),
        "training": crop_plan("training", 200, photographs, flips=True),
        "labelled": crop_plan("training", 200, image_samples.LABELLED, "labelled-0", True),
    }
    region_of: dict[str, Split] = {
        "calibration": "calibration",
        "validation": "validation",
        "training": "training",
        "labelled": "training",
    }
    for photograph in photographs:
        boxes = {
            name: [p.box for p in plan if p.photograph == photograph]
            for name, plan in plans.items()
        }
        for first, second in [
            ("calibration", "validation"),
            ("calibration", "training"),
            ("validation", "training"),
            ("calibration", "labelled"),
            ("validation", "labelled"),
        ]:
            for a in boxes[first]:
                assert not any(_overlap(a, b) for b in boxes[second]), (photograph, first, second)
        size = image_samples._photo(photograph.file).size
        for name, listed in boxes.items():
            x0, y0, x1, y1 = image_samples.region(size, region_of[name])
            for left, top, right, bottom in listed:
                assert x0 <= left < right <= x1 and y0 <= top < bottom <= y1


def test_splits_share_no_image() -> None:
    calibration = {_digest(image) for image in builtin_images("calibration")}
    validation = {_digest(image) for image in builtin_images("validation")}
    training = {_digest(image) for image in builtin_images("training", 64)}
    assert len(calibration) == 32 and len(validation) == 64
    assert calibration.isdisjoint(validation)
    assert training.isdisjoint(calibration | validation)


def test_sizes_and_aspect_ratios_vary() -> None:
    images = builtin_images("validation")
    sides = [min(image.size) for image in images]
    ratios = [image.width / image.height for image in images]
    assert min(sides) <= 64 and max(sides) >= 200
    assert min(ratios) < 0.75 and max(ratios) > 1.33
    plans = crop_plan("validation", 64, image_samples.available_photographs())
    # Resized crops and crops of every photograph are all represented.
    assert any(plan.resize is not None for plan in plans)
    assert any(plan.resize is None for plan in plans)
    assert {plan.photograph for plan in plans} == set(image_samples.available_photographs())


@pytest.mark.parametrize("split", ["calibration", "validation", "training"])
def test_every_crop_keeps_the_documented_bounds(split: Split) -> None:
    photographs = image_samples.available_photographs()
    plans = crop_plan(split, 20 * len(photographs), photographs, flips=True)
    whole_regions = 0
    for plan in plans:
        left, top, right, bottom = plan.box
        width, height = right - left, bottom - top
        assert min(width, height) >= image_samples.MIN_SIDE
        # 1:2 to 2:1, give or take rounding each side to whole pixels.
        assert 1 / 2.05 <= width / height <= 2.05, plan
        area = image_samples.region(image_samples._photo(plan.photograph.file).size, split)
        whole_regions += plan.box == area
        if plan.resize is not None:
            assert min(plan.resize) >= 32 and max(plan.resize) <= 1024, plan
            assert 1 / 2.1 <= plan.resize[0] / plan.resize[1] <= 2.1, plan
    assert whole_regions >= 1
    assert any(plan.flip for plan in plans) and not all(plan.flip for plan in plans)


def test_grey_photographs_become_rgb() -> None:
    grey = next(p for p in image_samples.available_photographs() if p.file == "camera.png")
    (plan,) = crop_plan("calibration", 1, [grey])
    image = image_samples.render(plan)
    assert image.mode == "RGB"
    red, green, blue = image.split()
    assert red.tobytes() == green.tobytes() == blue.tobytes()


def test_labelled_crops_cover_every_class_in_turn() -> None:
    labels = photograph_labels()
    assert 8 <= len(labels) <= 10 and len(set(labels)) == len(labels)
    crops = labelled_training_crops(2 * len(labels), seed=0)
    assert [label for _, label in crops] == list(range(len(labels))) * 2
    assert all(image.mode == "RGB" for image, _ in crops)
    held = labelled_heldout_crops("validation", len(labels))
    assert [label for _, label in held] == list(range(len(labels)))


def test_heldout_crops_are_the_builtin_validation_crops() -> None:
    builtin = {_digest(image) for image in builtin_images("validation")}
    held = [_digest(image) for image, _ in labelled_heldout_crops("validation", 20)]
    assert set(held) <= builtin


def test_describe_builtin_is_one_line() -> None:
    text = describe_builtin()
    assert "\n" not in text
    assert text.startswith("96 crops") and "scikit-image photographs" in text


def _exif_rotated_jpeg(path: Path) -> None:
    # Stored 40 wide and 20 high, left half red; orientation 6 says "rotate 90° clockwise
    # to display", so the upright picture is 20 wide and 40 high with red on top.
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)


def test_folder_is_read_sorted_upright_and_rgb(tmp_path: Path) -> None:
    Image.new("L", (30, 30), 128).save(tmp_path / "b_grey.png")
    Image.new("RGBA", (10, 12), (0, 255, 0, 128)).save(tmp_path / "c_alpha.PNG")
    _exif_rotated_jpeg(tmp_path / "a_phone.jpg")
    frames = [Image.new("P", (8, 8), 1), Image.new("P", (8, 8), 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 255, 0, 0, 255, 255] + [0] * (256 * 3 - 9))
    frames[0].save(tmp_path / "d_anim.gif", save_all=True, append_images=frames[1:])
    Image.new("I;16", (6, 6), 65535).save(tmp_path / "e_deep.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "._a_phone.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")

    images = load_image_folder(tmp_path)

    assert [image.size for image in images] == [(20, 40), (30, 30), (10, 12), (8, 8), (6, 6)]
    assert {image.mode for image in images} == {"RGB"}
    phone = images[0]
    top, bottom = phone.getpixel((10, 5)), phone.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60, "EXIF orientation was not applied"
    assert bottom[2] > 200 and bottom[0] < 60
    assert images[1].getpixel((0, 0)) == (128, 128, 128)
    assert images[3].getpixel((0, 0)) == (255, 255, 0), "not the GIF's first frame"
    assert images[4].getpixel((0, 0)) == (255, 255, 255)


def test_corrupt_file_names_its_path(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(BadInputError) as caught:
        load_image_folder(tmp_path)
    assert str(caught.value) == f"{broken}: not an image Pillow can read"


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "full.png").unlink()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"cut\.png: not an image Pillow can read"):
        load_image_folder(tmp_path)


def test_empty_or_missing_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(BadInputError, match="no images"):
        load_image_folder(tmp_path)
    with pytest.raises(BadInputError, match="not a folder"):
        load_image_folder(tmp_path / "absent")


def test_too_many_pixels_are_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_samples, "MAX_USER_PIXELS", 4_999)
    with pytest.raises(BadInputError, match=r"big.png: 100×50 pixels is more than"):
        load_image_folder(tmp_path)


def test_pillow_decompression_bomb_becomes_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (100, 50)).save(tmp_path / "bomb.png")
    # Pillow's own guard: a warning above MAX_IMAGE_PIXELS, an error above twice that.
    for limit in (4_000, 2_000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(BadInputError, match=r"bomb\.png: refused as a possible decompression"):
            load_image_folder(tmp_path)


def test_split_user_images_is_disjoint_and_never_empty() -> None:
    assert split_user_images([]) == ([], [])
    assert split_user_images(["a"]) == ([], ["a"])
    assert split_user_images(["a", "b"]) == (["b"], ["a"])
    assert split_user_images(["a", "b", "c"]) == (["c"], ["a", "b"])
    items = [str(number) for number in range(10)]
    calibration, validation = split_user_images(items)
    assert calibration == ["3", "7"]
    assert sorted(calibration + validation) == sorted(items)
    assert set(calibration).isdisjoint(validation)


def test_import_is_cheap() -> None:
    code = (
        "import sys, edgeport.image_samples\n"
        "heavy = {'PIL', 'numpy', 'skimage', 'torch'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"

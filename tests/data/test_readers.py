"""PNG / JPEG (8 and 16 bit), NIfTI / NRRD slices, channel conversion and resizing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from conftest import gradient, write_png
from PIL import Image

from medssl.data import ReadSettings, UnsupportedFormatError, read_image, resize_and_crop
from medssl.data.files import DataFileError
from medssl.data.readers import count_frames, is_supported
from medssl.data.volumes import scale_intensity


def test_png_8_and_16_bit(tmp_path: Path) -> None:
    g8 = gradient(6, 10, np.uint8)
    g16 = gradient(6, 10, np.uint16)
    img8 = read_image(write_png(tmp_path / "a.png", g8))
    img16 = read_image(write_png(tmp_path / "b.png", g16))
    np.testing.assert_allclose(img8[0], g8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(img16[0], g16 / 65535.0, atol=1e-7)
    assert img16.shape == (1, 6, 10) and img16.dtype == np.float32
    # 16 bit keeps levels that 8 bit merges
    assert (
        len(
            np.unique(
                read_image(
                    write_png(
                        tmp_path / "c.png", np.arange(0, 1024, dtype=np.uint16).reshape(32, 32)
                    )
                )[0]
            )
        )
        == 1024
    )


def test_jpeg_and_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    path = tmp_path / "x.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    one = read_image(path, ReadSettings(channels=1))
    three = read_image(path, ReadSettings(channels=3))
    assert one.shape == (1, 8, 8) and three.shape == (3, 8, 8)
    assert abs(float(three[0].mean()) - 200 / 255) < 0.03 and float(three[1].mean()) < 0.05
    assert abs(float(one.mean()) - 0.299 * 200 / 255) < 0.03
    grey = read_image(write_png(tmp_path / "g.png", gradient(4, 4)), ReadSettings(channels=3))
    assert grey.shape == (3, 4, 4) and np.array_equal(grey[0], grey[2])


def test_unsupported_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert not is_supported(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedFormatError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")
    good = write_png(
        tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    )
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="truncated or corrupt image data"):
        read_image(good)


def _volume(shape: tuple[int, int, int]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_volume_slices(tmp_path: Path, suffix: str) -> None:
    vol = _volume((5, 6, 7))
    path = tmp_path / f"v{suffix}"
    if suffix == ".nrrd":
        nrrd.write(str(path), vol)
    else:
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    for axis in (0, 1, 2):
        settings = ReadSettings(slice_axis=axis, volume_window=(0.0, float(vol.max())))
        assert count_frames(path, settings) == vol.shape[axis]
        index = 1
        image = read_image(path, settings, frame=index)
        expected = np.take(vol, index, axis=axis).T / float(vol.max())
        np.testing.assert_allclose(image[0], expected, atol=1e-6)
    middle = read_image(path, ReadSettings(slice_axis=2, volume_window=(0.0, 209.0)))
    np.testing.assert_allclose(middle[0], vol[:, :, 3].T / 209.0, atol=1e-6)


def test_scale_intensity_percentiles() -> None:
    arr = np.concatenate([np.linspace(0, 1, 1000), [1e6]]).astype(np.float32)
    out = scale_intensity(arr)
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[500] > 0.4  # the outlier does not squash the rest


def test_resize_and_crop_geometry() -> None:
    image = torch.rand(1, 40, 80)
    mask = torch.zeros(40, 80, dtype=torch.long)
    mask[:, 40:] = 2
    out, m = resize_and_crop(image, 20, mask)
    assert out.shape == (1, 20, 20) and m is not None and m.shape == (20, 20)
    assert set(m.unique().tolist()) == {0, 2}  # nearest: no new class values
    assert (m[:, :10] == 0).all() and (m[:, 10:] == 2).all()  # the centre crop keeps the middle
    tall, _ = resize_and_crop(torch.rand(3, 90, 30), 15)
    assert tall.shape == (3, 15, 15)
    # antialiasing: a fine checkerboard averages to grey instead of aliasing
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float()[None]
    small, _ = resize_and_crop(checker, 8)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)
    with pytest.raises(ValueError, match="mask shape"):
        resize_and_crop(image, 20, torch.zeros(10, 10))

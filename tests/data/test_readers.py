"""PNG / JPEG (8 and 16 bit), NIfTI / NRRD slices, channel conversion and resizing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from data_helpers import gradient, write_png
from PIL import Image

from medssl.data import ReadSettings, UnsupportedFormatError, read_image, resize_and_crop
from medssl.data.files import DataFileError
from medssl.data.readers import count_frames, is_supported, png_significant_bits
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


def _png16(path: Path, values: np.ndarray, sbit: int | None) -> Path:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("bits", [12, 15])
@pytest.mark.parametrize("with_sbit", [True, False])
def test_png16_with_fewer_significant_bits(tmp_path: Path, bits: int, with_sbit: bool) -> None:
    top = 2**bits - 1
    values = np.linspace(0, top, 64).round().reshape(8, 8)  # unscaled 12-/15-bit samples
    path = _png16(tmp_path / "x.png", values, bits if with_sbit else None)
    assert png_significant_bits(path) == (bits if with_sbit else None)
    img = read_image(path)[0]
    np.testing.assert_allclose(img, values / top, atol=1e-6)
    assert img.max() == 1.0 and len(np.unique(np.round(img * 255))) > 60  # the whole grey range
    full = read_image(path, ReadSettings(scale16="full"))[0]
    np.testing.assert_allclose(full, values / 65535.0, atol=1e-6)
    dim = _png16(tmp_path / "dim.png", values // 4 + 100, bits if with_sbit else None)
    minmax = read_image(dim, ReadSettings(scale16="minmax"))[0]
    assert minmax.min() == 0.0 and minmax.max() == 1.0


def test_png16_sbit_with_values_shifted_to_16_bits(tmp_path: Path) -> None:
    # The PNG specification's form: 12 significant bits, samples scaled up to 16 bits.
    values = (np.arange(64).reshape(8, 8) * 64) << 4
    img = read_image(_png16(tmp_path / "x.png", values, 12))[0]
    np.testing.assert_allclose(img, values / 65535.0, atol=1e-6)


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


def test_prepare_png16_output_keeps_its_brightness(tmp_path: Path) -> None:
    from medssl.data.prepare import _write_png

    dark = (np.linspace(0, 0.4, 64).reshape(8, 8) * 65535).round().astype(np.uint16)
    _write_png(tmp_path / "d.png", dark)  # marked sBIT 16: not taken for a 15-bit image
    np.testing.assert_allclose(read_image(tmp_path / "d.png")[0], dark / 65535.0, atol=1e-6)

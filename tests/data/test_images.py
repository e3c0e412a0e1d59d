"""Image and mask files: round trips, EXIF orientation, colour conversion, mask conventions."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from pconv_jax.data import images


def _smooth(h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / (w - 1), y / (h - 1), (x + y) / (h + w - 2)], -1).astype(np.float32)


def test_png_8_bit_round_trip_is_exact(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 41, 3), np.uint8)
    images.write_image(str(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "a.png")), rgb)
    # float input in [0, 1] is rounded to 8 bits
    images.write_image(str(tmp_path / "f.png"), rgb / 255.0)
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "f.png")), rgb)
    # RGB order on disk, as any other program reads it
    on_disk = cv2.cvtColor(cv2.imread(str(tmp_path / "a.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(on_disk, rgb)


def test_png_16_bit_keeps_16_bits(tmp_path):
    image = _smooth()
    images.write_image(str(tmp_path / "deep.png"), image, bits=16)
    on_disk = cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert on_disk.dtype == np.uint16
    np.testing.assert_array_equal(cv2.cvtColor(on_disk, cv2.COLOR_BGR2RGB),
                                  np.round(image * 65535).astype(np.uint16))
    # read back as 8-bit RGB for the network: the high byte
    read = images.read_image(str(tmp_path / "deep.png"))
    assert read.dtype == np.uint8
    assert np.abs(read.astype(int) - image * 255).max() <= 1
    with pytest.raises(ValueError, match="16 bits .* use .png"):
        images.write_image(str(tmp_path / "deep.jpg"), image, bits=16)


def test_jpeg_round_trip_is_close(tmp_path):
    image = _smooth()
    images.write_image(str(tmp_path / "a.jpg"), image, jpeg_quality=95)
    read = images.to_float(images.read_image(str(tmp_path / "a.jpg")))
    assert read.shape == image.shape
    assert np.abs(read - image).mean() < 0.01


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match="extensions"):
        images.write_image(str(tmp_path / "a.txt"), _smooth())


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    upright = (_smooth(40, 60) * 255).astype(np.uint8)
    # A camera stores the sensor's pixels and an orientation tag; tag 6 means "rotate 90° clockwise
    # to display", so the stored pixels are the upright image turned 90° counter-clockwise.
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=98, exif=exif)
    read = images.read_image(str(tmp_path / "phone.jpg"))
    assert read.shape == upright.shape
    assert np.abs(read.astype(int) - upright).mean() < 3


def test_grayscale_rgba_palette_and_16_bit_gray_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 30), np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "gray.png")),
                                  np.repeat(gray[..., None], 3, -1))
    rgba = rng.integers(0, 256, (20, 30, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "rgba.png")), rgba[..., :3])
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "palette.png")
    assert images.read_image(str(tmp_path / "palette.png")).shape == (20, 30, 3)
    deep = (gray.astype(np.uint16) << 8) | 0x7F
    cv2.imwrite(str(tmp_path / "gray16.png"), deep)
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "gray16.png")),
                                  np.repeat(gray[..., None], 3, -1))


def test_truncated_corrupt_and_missing_files(tmp_path):
    images.write_image(str(tmp_path / "a.jpg"), (_smooth(200, 300) * 255).astype(np.uint8))
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"cut\.jpg.*truncated"):
        images.read_image(str(tmp_path / "cut.jpg"))
    images.write_image(str(tmp_path / "a.png"), (_smooth(200, 300) * 255).astype(np.uint8))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png"):
        images.read_image(str(tmp_path / "cut.png"))
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        images.read_image(str(tmp_path / "junk.png"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.read_image(str(tmp_path / "nope.png"))


def _blank_png(path, width, height):
    """A black 16-bit gray PNG, written row by row (never the whole image in memory)."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    row, stream = bytes(1 + 2 * width), zlib.compressobj(1)  # filter byte + 16-bit pixels
    data = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # ours refuses it
def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    _blank_png(tmp_path / "huge.png", 12000, 12000)  # 2.9 GB once decoded
    assert (tmp_path / "huge.png").stat().st_size < 2_000_000

    def decode(self):
        raise AssertionError("the pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    refused = (r"huge\.png.* 12000x12000 pixels, above the limit of 100000000 pixels"
               r".*PCONV_MAX_PIXELS=144000000")
    with pytest.raises(ValueError, match=refused):
        images.read_image(str(tmp_path / "huge.png"))
    with pytest.raises(ValueError, match=refused):  # masks too
        images.read_mask(str(tmp_path / "huge.png"))


def test_pixel_limit_is_a_keyword_or_the_environment_variable(tmp_path, monkeypatch):
    images.write_image(str(tmp_path / "a.png"), np.zeros((30, 40, 3), np.uint8))
    path = str(tmp_path / "a.png")
    assert images.read_image(path, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ValueError, match=r"a\.png.* 40x30 pixels, above the limit of 1199 pixels"):
        images.read_image(path, max_pixels=1199)
    monkeypatch.setenv("PCONV_MAX_PIXELS", "1000")
    assert images.pixel_limit() == 1000
    with pytest.raises(ValueError, match="limit of 1000 pixels.*PCONV_MAX_PIXELS=1200"):
        images.read_image(path)
    monkeypatch.setenv("PCONV_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="PCONV_MAX_PIXELS must be a positive number"):
        images.read_image(path)
    monkeypatch.delenv("PCONV_MAX_PIXELS")
    assert images.pixel_limit() == images.MAX_PIXELS == 100_000_000


def test_floating_point_images_are_read_in_their_range_or_refused(tmp_path):
    values = _smooth(20, 30)[..., 0]  # in [0, 1]
    Image.fromarray(values, "F").save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "unit.tif")),
                                  np.repeat(np.round(values * 255).astype(np.uint8)[..., None],
                                            3, -1))
    Image.fromarray(values * 255, "F").save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide\.tif.* from 0 to 255; .*\[0, 1\]"):
        images.read_image(str(tmp_path / "wide.tif"))
    for bad in (np.nan, np.inf):
        values[3, 4] = bad
        Image.fromarray(values, "F").save(tmp_path / "bad.tif")
        with pytest.raises(ValueError, match=r"bad\.tif.* NaN or infinite"):
            images.read_image(str(tmp_path / "bad.tif"))


def test_mask_conventions_white_and_black(tmp_path):
    pixels = np.zeros((10, 12), np.uint8)
    pixels[2:5, 3:9] = 255
    pixels[7, 0] = 127  # just below the threshold: black
    pixels[8, 0] = 128  # at the threshold: white
    cv2.imwrite(str(tmp_path / "m.png"), pixels)
    white = pixels >= 128
    holes_white = images.read_mask(str(tmp_path / "m.png"), "white")
    holes_black = images.read_mask(str(tmp_path / "m.png"), "black")
    assert holes_white.shape == (10, 12, 1) and holes_white.dtype == np.float32
    np.testing.assert_array_equal(holes_white[..., 0] == 0, white)
    np.testing.assert_array_equal(holes_black[..., 0] == 0, ~white)
    with pytest.raises(ValueError, match="'white' or 'black'"):
        images.read_mask(str(tmp_path / "m.png"), "grey")
    # written back in either convention, read back the same
    for holes in ("white", "black"):
        images.write_mask(str(tmp_path / f"w_{holes}.png"), holes_white, holes)
        np.testing.assert_array_equal(
            images.read_mask(str(tmp_path / f"w_{holes}.png"), holes), holes_white)
    on_disk = cv2.imread(str(tmp_path / "w_white.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(on_disk == 255, white)


def test_masks_resize_nearest_only_and_warn_on_request(tmp_path):
    pixels = np.zeros((14, 20), np.uint8)
    pixels[3:9, 5:15] = 255
    cv2.imwrite(str(tmp_path / "m.png"), pixels)
    mask = images.read_mask(str(tmp_path / "m.png"), size=(37, 53))
    assert mask.shape == (37, 53, 1) and set(np.unique(mask)) == {0.0, 1.0}
    with pytest.warns(UserWarning, match="resizing the mask nearest-neighbour"):
        images.read_mask(str(tmp_path / "m.png"), size=(37, 53), warn_if_resized=True)
    expected = cv2.resize(pixels, (53, 37), interpolation=cv2.INTER_NEAREST) >= 128
    np.testing.assert_array_equal(mask[..., 0] == 0, expected)


def test_hole_map_uses_the_network_threshold():
    mask = np.array([[0.0, 0.5, 0.5001, 1.0]], np.float32)[..., None]
    np.testing.assert_array_equal(images.hole_map(mask), [[True, True, False, False]])

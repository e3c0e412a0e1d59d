"""The inpainting command: odd sizes, mask resizing, hole colour convention, clear errors."""

import cv2
import numpy as np
import pytest
from flax import nnx

from pconv_jax.data import images
from pconv_jax.inference import inpaint, methods, model_inpainter
from pconv_jax.network.unet import PConvUNet
from tests.helpers.commands import run_inpaint


def _write_rgb(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    _write_rgb(tmp_path / "photo.png", rgb)
    holes = np.zeros((37, 53), np.uint8)
    holes[10:20, 15:30] = 255  # white = hole
    cv2.imwrite(str(tmp_path / "mask.png"), holes)
    return tmp_path, rgb, holes


def test_odd_sized_image_through_the_network_keeps_size_and_known_pixels(photo):
    tmp_path, rgb, holes = photo
    model = PConvUNet(depth=3, widths=(4, 8, 8), rngs=nnx.Rngs(0))
    image, mask = inpaint.read_pair(str(tmp_path / "photo.png"), str(tmp_path / "mask.png"))
    out = model_inpainter.inpaint_image(model_inpainter.ModelInpainter(model), image, mask)
    assert out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out[mask[..., 0] > 0], image[mask[..., 0] > 0])
    assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert not np.allclose(out[holes > 0], image[holes > 0])  # holes were replaced


def test_command_with_patchmatch_fills_only_the_holes(photo):
    tmp_path, rgb, holes = photo
    run_inpaint(["--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
                 "--method", "patchmatch", "--out", str(tmp_path / "pm.png")])
    out = cv2.cvtColor(cv2.imread(str(tmp_path / "pm.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(out[holes == 0], rgb[holes == 0])
    assert (out[holes > 0] != rgb[holes > 0]).any(axis=-1).mean() > 0.9


def test_command_white_and_black_conventions_swap_the_holes(photo):
    tmp_path, rgb, holes = photo
    common = ["--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
              "--method", "telea"]
    run_inpaint(common + ["--out", str(tmp_path / "white.png"),
                          "--panel", str(tmp_path / "panel.png")])
    panel = cv2.imread(str(tmp_path / "panel.png"))
    assert panel.shape == (37, 3 * 53 + 2 * 4, 3)
    assert (panel[:, :53][holes > 0] == 255).all()  # holes shown white in the input
    run_inpaint(common + ["--out", str(tmp_path / "black.png"), "--mask_holes", "black"])
    white = cv2.cvtColor(cv2.imread(str(tmp_path / "white.png")), cv2.COLOR_BGR2RGB)
    black = cv2.cvtColor(cv2.imread(str(tmp_path / "black.png")), cv2.COLOR_BGR2RGB)
    hole = holes > 0
    np.testing.assert_array_equal(white[~hole], rgb[~hole])  # white = hole: the rest kept
    np.testing.assert_array_equal(black[hole], rgb[hole])    # black = hole: the square kept
    assert not np.array_equal(white[hole], rgb[hole])
    assert not np.array_equal(black[~hole], rgb[~hole])


def test_mask_of_another_size_is_resized_nearest_with_a_warning(photo):
    tmp_path, _, holes = photo
    small = cv2.resize(holes, (20, 14), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / "small.png"), small)
    with pytest.warns(UserWarning, match="resizing the mask nearest-neighbour"):
        _, mask = inpaint.read_pair(str(tmp_path / "photo.png"), str(tmp_path / "small.png"))
    assert mask.shape == (37, 53, 1)
    assert set(np.unique(mask)) == {0.0, 1.0}  # still binary: no interpolation


def test_folder_mode_pairs_by_name(tmp_path, photo):
    src, rgb, holes = photo
    (tmp_path / "imgs").mkdir(), (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        _write_rgb(tmp_path / "imgs" / f"{name}.jpg", rgb)
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), holes)
    run_inpaint(["--image", str(tmp_path / "imgs"), "--mask", str(tmp_path / "masks"),
                 "--out", str(tmp_path / "out"), "--method", "ns"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    cv2.imwrite(str(tmp_path / "imgs" / "c.png"), holes)
    with pytest.raises(FileNotFoundError, match=r"no mask .* for image\(s\) \['c'\]"):
        run_inpaint(["--image", str(tmp_path / "imgs"), "--mask", str(tmp_path / "masks"),
                     "--out", str(tmp_path / "out"), "--method", "ns"])


def test_missing_and_unreadable_files_are_clear_errors(photo):
    tmp_path, _, _ = photo
    with pytest.raises(FileNotFoundError, match="nope.png' does not exist"):
        run_inpaint(["--image", str(tmp_path / "nope.png"), "--mask", str(tmp_path / "mask.png"),
                     "--out", str(tmp_path / "o.png"), "--method", "telea"])
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        images.read_image(str(tmp_path / "junk.png"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        methods.build("model", workdir=str(tmp_path))


def _telea(image, mask, out, *extra):
    run_inpaint(["--image", str(image), "--mask", str(mask), "--out", str(out),
                 "--method", "telea", *extra])


def test_outputs_that_would_overwrite_an_input_are_refused(photo):
    tmp_path, _, _ = photo
    before = (tmp_path / "photo.png").read_bytes(), (tmp_path / "mask.png").read_bytes()
    photo_png, mask_png = tmp_path / "photo.png", tmp_path / "mask.png"
    with pytest.raises(ValueError, match="--out .* is the input --image"):
        _telea(photo_png, mask_png, tmp_path / "." / "photo.png")
    with pytest.raises(ValueError, match="--out .* is the input --mask"):
        _telea(photo_png, mask_png, mask_png)
    (tmp_path / "link.png").symlink_to(photo_png)
    with pytest.raises(ValueError, match="--out .* is the input --image"):
        _telea(photo_png, mask_png, tmp_path / "link.png")
    with pytest.raises(ValueError, match="--panel .* is the input --image"):
        _telea(photo_png, mask_png, tmp_path / "out.png", "--panel", str(photo_png))
    assert ((tmp_path / "photo.png").read_bytes(), (tmp_path / "mask.png").read_bytes()) == before
    assert not (tmp_path / "out.png").exists()

    (tmp_path / "imgs").mkdir(), (tmp_path / "masks").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(before[0])
    (tmp_path / "masks" / "a.png").write_bytes(before[1])
    for out in (tmp_path / "imgs", tmp_path / "masks", tmp_path / "imgs" / "results"):
        with pytest.raises(ValueError, match="lies in the input folder"):
            _telea(tmp_path / "imgs", tmp_path / "masks", out)
    assert (tmp_path / "imgs" / "a.png").read_bytes() == before[0]
    assert (tmp_path / "masks" / "a.png").read_bytes() == before[1]
    _telea(tmp_path / "imgs", tmp_path / "masks", tmp_path / "results")  # outside: fine
    assert (tmp_path / "results" / "a.png").exists()


def test_folder_mode_refuses_two_files_with_one_stem(tmp_path, photo):
    src, rgb, holes = photo
    (tmp_path / "imgs").mkdir(), (tmp_path / "masks").mkdir()
    _write_rgb(tmp_path / "imgs" / "a.jpg", rgb)
    _write_rgb(tmp_path / "imgs" / "a.png", rgb[::-1])
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), holes)
    with pytest.raises(ValueError, match=r"same name stem \(a\.jpg and a\.png\)"):
        _telea(tmp_path / "imgs", tmp_path / "masks", tmp_path / "out")
    (tmp_path / "imgs" / "a.png").unlink()
    cv2.imwrite(str(tmp_path / "masks" / "a.bmp"), holes)
    with pytest.raises(ValueError, match=r"masks' holds files with the same name stem"):
        _telea(tmp_path / "imgs", tmp_path / "masks", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_jpeg_is_refused_with_its_name(tmp_path, photo):
    _, rgb, _ = photo
    big = cv2.resize(rgb, (400, 300), interpolation=cv2.INTER_CUBIC)
    _write_rgb(tmp_path / "whole.jpg", big)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    mask = np.zeros((300, 400), np.uint8)
    mask[100:150, 100:200] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # OpenCV alone would accept it
    with pytest.raises(ValueError, match=r"cut\.jpg.*truncated"):
        _telea(tmp_path / "cut.jpg", tmp_path / "m.png", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_an_all_hole_mask_is_refused(photo):
    tmp_path, _, holes = photo
    cv2.imwrite(str(tmp_path / "all.png"), np.full_like(holes, 255))
    with pytest.raises(ValueError, match="all.png' marks every pixel as a hole"):
        _telea(tmp_path / "photo.png", tmp_path / "all.png", tmp_path / "out.png")
    model = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="every pixel as a hole"):
        model_inpainter.ModelInpainter(model)(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 1)))


def test_the_photo_as_its_own_mask_is_refused(photo):
    tmp_path, _, _ = photo
    photo_png = tmp_path / "photo.png"
    with pytest.raises(ValueError, match=r"--mask .*photo.png' is the --image .* itself"):
        _telea(photo_png, photo_png, tmp_path / "out.png")
    (tmp_path / "link.png").symlink_to(photo_png)
    with pytest.raises(ValueError, match="is the --image .* itself"):
        _telea(photo_png, tmp_path / "link.png", tmp_path / "out.png")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(photo_png.read_bytes())
    with pytest.raises(ValueError, match=r"imgs' is the --image .* itself: .* mask folder"):
        _telea(tmp_path / "imgs", tmp_path / "imgs" / ".", tmp_path / "results")
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "results").exists()


def test_a_mask_without_any_hole_is_refused(photo):
    tmp_path, _, holes = photo
    cv2.imwrite(str(tmp_path / "none.png"), np.zeros_like(holes))  # all black, white = hole
    with pytest.raises(ValueError, match=r"none.png' has no hole pixel \(white = hole\)"):
        _telea(tmp_path / "photo.png", tmp_path / "none.png", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def _large_photo(tmp_path):
    y, x = np.mgrid[0:180, 0:260]
    rgb = np.stack([x * 255 / 259, y * 255 / 179, 128 + 60 * np.sin(x / 9.0)], -1)
    _write_rgb(tmp_path / "big.png", rgb.astype(np.uint8))
    holes = np.zeros((180, 260), np.uint8)
    holes[30:42, 40:55] = 255
    holes[120:128, 200:230] = 255
    cv2.imwrite(str(tmp_path / "big_mask.png"), holes)
    return holes > 0


def test_a_photo_above_max_side_is_filled_crop_by_crop_around_its_holes(tmp_path, monkeypatch):
    hole = _large_photo(tmp_path)
    common = ["--image", str(tmp_path / "big.png"), "--mask", str(tmp_path / "big_mask.png"),
              "--method", "telea"]
    run_inpaint(common + ["--out", str(tmp_path / "whole.png")])  # 260 px <= 1024: whole
    build = methods.build
    seen = []

    def spy(*args, **kwargs):  # the classical method, recording the sizes it is given
        method = build(*args, **kwargs)
        fill = method.inpaint
        method.inpaint = lambda images, masks: seen.append(images.shape[1:3]) or fill(images,
                                                                                     masks)
        return method

    monkeypatch.setattr(methods, "build", spy)
    run_inpaint(common + ["--out", str(tmp_path / "crops.png"), "--max_side", "128"])
    assert len(seen) == 2 and max(max(size) for size in seen) <= 128  # one crop per hole
    whole, crops = (images.read_image(str(tmp_path / name)) for name in ("whole.png", "crops.png"))
    original = images.read_image(str(tmp_path / "big.png"))
    np.testing.assert_array_equal(crops[~hole], original[~hole])
    # Telea fills from the hole's border: the crop's context holds all it reads.
    assert np.abs(crops.astype(int) - whole.astype(int)).max() <= 2


def test_a_large_photo_through_the_network_changes_only_its_holes(tmp_path):
    from tests.helpers.training import tiny_workdir
    hole = _large_photo(tmp_path)
    tiny_workdir(tmp_path / "w")
    run_inpaint(["--workdir", str(tmp_path / "w"), "--image", str(tmp_path / "big.png"),
                 "--mask", str(tmp_path / "big_mask.png"), "--out", str(tmp_path / "out.png"),
                 "--max_side", "64"])
    out, original = (images.read_image(str(tmp_path / n)) for n in ("out.png", "big.png"))
    assert out.shape == original.shape
    np.testing.assert_array_equal(out[~hole], original[~hole])
    assert (out[hole] != original[hole]).any()

"""The inpainting command: odd sizes, mask resizing, hole colour convention, clear errors."""

import cv2
import numpy as np
import pytest
from absl import flags
from flax import nnx

from pconv_jax.evaluation import table1
from pconv_jax.inference import inpaint
from pconv_jax.network.unet import PConvUNet


def run_inpaint(args: list[str]) -> None:
    """Runs the inpaint command's `main` in this process, its flags parsed from `args`."""
    if "image" not in flags.FLAGS:
        inpaint.define_flags()
    flags.FLAGS.unparse_flags()  # flags left out take their defaults again
    inpaint.main(flags.FLAGS(["inpaint.py", *args]))


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
    image = inpaint.read_image(str(tmp_path / "photo.png"))
    mask = inpaint.read_mask(str(tmp_path / "mask.png"), image.shape[:2])
    out = inpaint.inpaint_image(table1.model_inpainter(model), image, mask, multiple=8)
    assert out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out[mask[..., 0] > 0], image[mask[..., 0] > 0])
    assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert not np.allclose(out[holes > 0], image[holes > 0])  # holes were replaced


def test_padding_mirrors_the_mask_too():
    image = np.arange(3 * 5 * 3, dtype=np.float32).reshape(3, 5, 3)
    mask = np.ones((3, 5, 1), np.float32)
    mask[2, 4] = 0  # a hole in the bottom-right corner
    padded_image, padded_mask = inpaint.pad_to_multiple(image, mask, 4)
    assert padded_image.shape == (4, 8, 3) and padded_mask.shape == (4, 8, 1)
    assert padded_mask[3, 5, 0] == 0 and padded_mask[2, 5, 0] == 0  # mirrors of the hole
    assert padded_mask[0, 5, 0] == 1
    np.testing.assert_array_equal(padded_image[:3, :5], image)


def test_command_white_and_black_conventions_swap_the_holes(photo):
    tmp_path, rgb, holes = photo
    common = ["--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
              "--method", "telea"]
    run_inpaint(common + ["--out", str(tmp_path / "white.png"),
                          "--panel", str(tmp_path / "panel.png")])
    panel = cv2.imread(str(tmp_path / "panel.png"))
    assert panel.shape == (37, 3 * 53 + 2 * 4, 3)
    assert (panel[:, :53][holes > 0] == 255).all()  # holes shown white in the input
    run_inpaint(common + ["--out", str(tmp_path / "black.png"), "--mask-holes", "black"])
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
        mask = inpaint.read_mask(str(tmp_path / "small.png"), (37, 53))
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
        inpaint.read_image(str(tmp_path / "junk.png"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        inpaint.workdir_config(str(tmp_path))

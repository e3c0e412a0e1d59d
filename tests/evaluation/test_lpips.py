"""LPIPS against the `lpips` package's own values (tests/fixtures/make_lpips_fixtures.py): the
shipped calibration weights on a RANDOM VGG16 backbone, drawn from a seed by the fixture
script's `seeded_backbone` (the 59 MB of weights are not stored), and the calibration reader's
errors."""

import importlib.util
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pconv_jax.evaluation import lpips
from pconv_jax.network import vgg16 as vgg
from pconv_jax.weights import checks
from tests import helpers
from tests.helpers.torch_files import Storage, Tensor, write_checkpoint
from tests.helpers.training import tiny_eval_config

FIXTURES = str(helpers.FIXTURES)
LPIPS_DIR = os.path.join(FIXTURES, "lpips")
KNOWN_LPIPS = 0.00910645  # the fixture's known pair, as lpips 0.1.4 computes it


def _fixture_script():
    """The fixture script as a module: it imports NumPy only at its top level."""
    spec = importlib.util.spec_from_file_location(
        "make_lpips_fixtures", os.path.join(FIXTURES, "make_lpips_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _fixture_script()


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(LPIPS_DIR, "reference.npz")) as f:
        return dict(f)


@pytest.fixture(scope="module")
def backbone(script, reference):
    """The random backbone the reference values were computed with, as VGGParams."""
    state = script.seeded_backbone()
    sums = [v.astype(np.float64).sum() for v in state.values()]
    np.testing.assert_array_equal(sums, reference["backbone_sums"])  # the same numbers
    convs = {name: {"kernel": state[f"features.{index}.weight"].transpose(2, 3, 1, 0),
                    "bias": state[f"features.{index}.bias"]}
             for name, index, *_ in vgg.VGG16_CONVS}
    return vgg.make_params(convs, "torch")


@pytest.fixture(scope="module")
def metric(backbone):
    return lpips.make_lpips(backbone, lpips.load_lpips_calibration(
        os.path.join(LPIPS_DIR, "vgg_lin.pth")))


def as_unit(images):
    return jnp.asarray(images, jnp.float32) / 255.0


@pytest.mark.slow
def test_matches_the_lpips_package_on_seeded_pairs(metric, script, reference):
    for i, (count, h, w) in enumerate(script.PAIRS):
        a, b = as_unit(reference[f"a_{i}"]), as_unit(reference[f"b_{i}"])
        assert a.shape == (count, h, w, 3)
        got = np.asarray(metric(a, b))
        assert got.shape == (count,)
        np.testing.assert_allclose(got, reference[f"lpips_{i}"], rtol=1e-5)
        np.testing.assert_allclose(got, reference[f"lpips64_{i}"], rtol=1e-5)


def test_identical_images_give_exactly_zero(metric, reference):
    a = as_unit(reference["a_0"])
    np.testing.assert_array_equal(np.asarray(metric(a, a)), 0.0)
    np.testing.assert_array_equal(np.asarray(metric(a, jnp.array(a))), 0.0)  # another buffer


def test_known_pair(metric, script, reference):
    a, b = script.known_pair()  # a gradient, and the same with a grey square
    np.testing.assert_array_equal(a, reference["known_a"])
    np.testing.assert_array_equal(b, reference["known_b"])
    got = np.asarray(metric(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(got, reference["known_lpips"], rtol=1e-5)
    np.testing.assert_allclose(got, [KNOWN_LPIPS], rtol=1e-5)


def test_shipped_file_and_resaved_copy_hold_the_same_weights():
    # The package's file is torch's legacy stream, the copy torch.save's zip archive.
    shipped = lpips.load_lpips_calibration(os.path.join(LPIPS_DIR, "vgg_v0.1_shipped.pth"))
    resaved = lpips.load_lpips_calibration(os.path.join(LPIPS_DIR, "vgg_lin.pth"))
    assert [w.shape for w in shipped] == [(64,), (128,), (256,), (512,), (512,)]
    for a, b in zip(shipped, resaved):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.min() >= 0


# --------------------------------------------------------------------------- calibration file


def write_calibration(path, arrays, layout="zip"):
    """A torch checkpoint {key: array} holding float32 tensors."""
    tensors, data = {}, {}
    for key, array in arrays.items():
        storage = Storage(str(len(data)), array.size)
        data[storage.key] = np.ascontiguousarray(array, "<f4").tobytes()
        stride = [int(np.prod(array.shape[d + 1:])) for d in range(array.ndim)]
        tensors[key] = Tensor(storage, 0, array.shape, stride)
    write_checkpoint(path, layout, tensors, data)


def calibration_arrays():
    rng = np.random.default_rng(0)
    return {key: rng.uniform(0, 1, (1, c, 1, 1)).astype(np.float32)
            for key, c in zip(lpips.CALIBRATION_KEYS, lpips.CHANNELS)}


def test_calibration_round_trips_in_both_torch_layouts(tmp_path):
    arrays = calibration_arrays()
    for layout in ("zip", "legacy"):
        write_calibration(tmp_path / f"{layout}.pth", arrays, layout)
        for got, want in zip(lpips.load_lpips_calibration(tmp_path / f"{layout}.pth"),
                             arrays.values()):
            np.testing.assert_array_equal(got, want.ravel())


def test_missing_calibration_file_says_where_it_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        lpips.load_lpips_calibration(tmp_path / "vgg.pth")
    for needle in (str(tmp_path / "vgg.pth"), "pip install --no-deps lpips",
                   "lpips/weights/v0.1/vgg.pth", "github.com/richzhang/PerceptualSimilarity",
                   "BSD-2-Clause", "--config.eval.lpips_weights=PATH"):
        assert needle in str(err.value)


def test_no_file_named_and_no_package_says_so(monkeypatch):
    monkeypatch.setattr(lpips, "default_lpips_weights", lambda: None)
    with pytest.raises(FileNotFoundError, match="no file named and no `lpips` package found"):
        lpips.load_lpips_calibration(None)


@pytest.mark.parametrize("change, message", [
    (lambda a: a["lin3.model.1.weight"].__setitem__((0, 5, 0, 0), -0.25),
     r"'lin3.model.1.weight' holds 1 negative value"),
    (lambda a: a.__setitem__("lin1.model.1.weight", np.ones((1, 192, 1, 1), np.float32)),
     r"'lin1.model.1.weight' has shape \(1, 192, 1, 1\), expected \(1, 128, 1, 1\)"),
    (lambda a: a.__setitem__("lin0.model.1.weight", np.ones(64, np.float32)),
     r"'lin0.model.1.weight' has shape \(64,\), expected \(1, 64, 1, 1\)"),
    (lambda a: a["lin2.model.1.weight"].__setitem__((0, 7, 0, 0), np.nan),
     r"'lin2.model.1.weight' holds 1 non-finite value"),
], ids=["negative", "alexnet_shape", "flat", "nan"])
def test_bad_calibration_weights_are_refused_naming_key_and_file(tmp_path, change, message):
    arrays = calibration_arrays()
    change(arrays)
    path = tmp_path / "vgg.pth"
    write_calibration(path, arrays)
    with pytest.raises(checks.WeightsFileError, match=message) as err:
        lpips.load_lpips_calibration(path)
    assert str(path) in str(err.value)


def test_missing_calibration_key_is_named(tmp_path):
    arrays = calibration_arrays()
    del arrays["lin4.model.1.weight"]
    write_calibration(tmp_path / "vgg.pth", arrays)
    with pytest.raises(KeyError, match=r"missing key 'lin4.model.1.weight'"):
        lpips.load_lpips_calibration(tmp_path / "vgg.pth")


# --------------------------------------------------------------------------- locating the file


def test_default_weights_are_found_without_importing_lpips_or_torch(tmp_path, monkeypatch):
    package = tmp_path / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\n")
    shutil.copyfile(os.path.join(LPIPS_DIR, "vgg_lin.pth"),
                    package / "weights" / "v0.1" / "vgg.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = lpips.default_lpips_weights()
    assert found == str(package / "weights" / "v0.1" / "vgg.pth")
    assert "lpips" not in sys.modules and "torch" not in sys.modules
    assert not marker.exists()
    assert len(lpips.load_lpips_calibration(None)) == 5  # None: the package's file


def test_default_weights_none_when_the_package_lacks_the_file(tmp_path, monkeypatch):
    (tmp_path / "lpips").mkdir()
    (tmp_path / "lpips" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lpips.default_lpips_weights() is None


# --------------------------------------------------------------------------- the VGG it needs


def test_make_lpips_refuses_a_backbone_without_conv4_conv5():
    calibration = tuple(a.ravel() for a in calibration_arrays().values())
    with pytest.raises(ValueError, match=r"all 5 blocks.*blocks 1\.\.3.*blocks=5"):
        lpips.make_lpips(vgg.random_vgg16(jax.random.key(0)), calibration)


def test_make_lpips_refuses_keras_weights(backbone):
    calibration = tuple(a.ravel() for a in calibration_arrays().values())
    caffe = vgg.VGGParams(convs=backbone.convs, preprocessing="caffe")
    with pytest.raises(ValueError, match="calibrated on torchvision's VGG16"):
        lpips.make_lpips(caffe, calibration)


def test_missing_vgg_file_is_the_loss_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VGG16 weights file not found.*vgg_weights"):
        lpips.load_lpips(tmp_path / "vgg16.pth", os.path.join(LPIPS_DIR, "vgg_lin.pth"))


def test_mismatched_integer_or_tiny_images_are_refused(metric):
    a = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="same shape"):
        metric(a, jnp.zeros((1, 32, 33, 3)))
    with pytest.raises(ValueError, match="float images in"):
        metric(jnp.zeros((1, 32, 32, 3), jnp.uint8), jnp.zeros((1, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match="at least 16x16"):
        metric(jnp.zeros((1, 15, 32, 3)), jnp.zeros((1, 15, 32, 3)))


@pytest.mark.slow
@pytest.mark.multidevice
def test_batch_sharded_pairs_give_the_same_values(metric):
    rng = np.random.default_rng(3)
    a, b = (rng.random((8, 32, 32, 3), np.float32) for _ in range(2))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with jax.set_mesh(mesh):
        got = metric(jax.device_put(a, sharding), jax.device_put(b, sharding))
    assert got.sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_allclose(np.asarray(got), np.asarray(metric(a, b)), rtol=1e-5)


@pytest.mark.slow
def test_eval_reports_lpips_per_mask_with_the_named_files(tmp_path, backbone, metric):
    from pconv_jax.data import heldout, nvidia_masks
    from pconv_jax.evaluation import baselines
    from pconv_jax.inference import evaluate
    from pconv_jax.weights import vgg16_files
    vgg16_files.save_npz(backbone, tmp_path / "vgg16.npz")
    config = tiny_eval_config(lpips_weights=os.path.join(LPIPS_DIR, "vgg_lin.pth"))
    config.loss.vgg_weights = str(tmp_path / "vgg16.npz")
    results = evaluate.run(config, str(tmp_path / "w"), method="telea",
                           metric_names="lpips,l1", progress=False)
    # the same numbers as the metric on the same composites, computed here directly
    images = np.asarray(heldout.load_eval_images(
        config.data, config.eval.num_images, heldout.eval_image_size(config)), np.float32)
    test_masks = nvidia_masks.scan_test_masks(results["test_masks"])
    index = np.arange(len(test_masks))
    composites = baselines.inpaint_opencv(
        images[index % len(images)], test_masks.load(index, images.shape[1:3]))
    want = np.asarray(metric(composites, images[index % len(images)]))
    np.testing.assert_allclose(results["per_mask"]["lpips"], want, rtol=1e-5)
    assert results["table"]["all"]["lpips"] == pytest.approx(want.mean(), rel=1e-5)
    assert "| LPIPS |" in results["markdown"]


def test_eval_lpips_without_vgg_weights_names_the_setting(tmp_path):
    from pconv_jax.inference import evaluate
    with pytest.raises(FileNotFoundError, match="LPIPS needs VGG16 weights.*vgg_weights"):
        evaluate.run(tiny_eval_config(), str(tmp_path), method="ns", metric_names="lpips",
                     progress=False)
    assert not list(tmp_path.iterdir())

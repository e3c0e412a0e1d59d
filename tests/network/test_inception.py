"""Inception-v3 (FID network), its weights file, FID and Inception Score, against pytorch-fid.

The reference outputs come from pytorch-fid 0.3.0 on random weights
(tests/fixtures/make_inception_fixtures.py, run by hand with torch); the weights themselves are
rebuilt here from the same seeded recipe and written as a .pth without torch.
"""

import importlib.util
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pconv_jax.evaluation import fid
from pconv_jax.network import inception
from pconv_jax.weights import inception_files
from tests import helpers
from tests.helpers.torch_files import write_torch_zip
from tests.helpers.training import tiny_eval_config

FIXTURES = helpers.FIXTURES / "inception"


def _recipe():
    """The fixture script's seeded weights (it imports torch only when run)."""
    spec = importlib.util.spec_from_file_location(
        "make_inception_fixtures", FIXTURES.parent / "make_inception_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference.npz", allow_pickle=False) as f:
        return dict(f)


@pytest.fixture(scope="module")
def seeded_state(reference):
    state = _recipe().seeded_state_dict(inception_files.expected_shapes())
    order = [list(state).index(k) for k in reference["state_keys"]]
    np.testing.assert_allclose(_recipe().checksums(state)[order], reference["state_checksums"],
                               rtol=1e-12, err_msg="the seeded weights no longer match the "
                               "fixture's: rerun make_inception_fixtures.py")
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, seeded_state):
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    write_torch_zip(path, seeded_state)
    return path


@pytest.fixture(scope="module")
def features_fn(weights_file):
    return fid.make_inception_fn(inception_files.load_inception(weights_file))


def test_expected_shapes_are_pytorch_fids_state_dict(reference):
    """Our key/shape table equals FIDInceptionV3().state_dict() (its float entries)."""
    ours = {k: str(v) for k, v in inception_files.expected_shapes().items()}
    theirs = dict(zip(reference["state_keys"].tolist(), reference["state_shapes"].tolist()))
    assert ours == theirs


@pytest.mark.parametrize("size", ["small", "large"])  # upscaled from 64x48, downscaled from 512x384
def test_features_match_pytorch_fid(reference, features_fn, size):
    images = reference[f"images_{size}"].astype(np.float32) / 255.0
    pool, logits = features_fn(images)
    assert pool.dtype == logits.dtype == np.float32
    for ours, theirs in ((pool, reference[f"pool_{size}"]), (logits, reference[f"logits_{size}"])):
        assert ours.shape == theirs.shape
        relative = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
        assert relative <= 1e-4, relative


def test_downscaling_fixture_would_catch_antialiasing(reference):
    """The reference resize does not antialias; jax.image.resize's default would, and would
    change the 512x384 inputs by far more than the features' tolerance."""
    images = reference["images_large"].astype(np.float32) / 255.0
    antialiased = jax.image.resize(jnp.asarray(images), (2, 299, 299, 3), "bilinear")
    plain = inception.resize_and_scale(jnp.asarray(images))
    assert float(jnp.max(jnp.abs(2 * antialiased - 1 - plain))) > 0.1


def test_frechet_distance_matches_pytorch_fid(reference):
    for a, b, ab in (("fid_a", "fid_b", "fid_ab"), ("fid_few_a", "fid_few_b", "fid_few_ab")):
        value = fid.frechet_distance(reference[a], reference[b])
        assert value == pytest.approx(float(reference[ab]), rel=1e-3), (ab, value)


def test_frechet_distance_of_a_set_with_itself_is_zero(reference):
    a = reference["fid_a"]
    assert abs(fid.frechet_distance(a, a)) < 1e-6
    shifted = fid.frechet_distance(a, a + 2.0)  # same covariance: FID = |mu_a - mu_b|^2
    assert shifted == pytest.approx(4.0 * a.shape[1], rel=1e-6)


def test_frechet_distance_refuses_bad_features():
    with pytest.raises(ValueError, match="N >= 2"):
        fid.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="sizes differ"):
        fid.frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        fid.frechet_distance(np.full((5, 4), np.nan), np.zeros((5, 4)))


def test_inception_score_known_values():
    # Every image equally unsure of every class: p(y|x) = p(y), KL = 0, IS = 1.
    assert fid.inception_score(np.zeros((20, 1008)), splits=10) == pytest.approx((1.0, 0.0))
    # Certain, and balanced over K classes in every split: KL = log K, IS = K.
    k = 8
    one_hot = np.tile(np.eye(k) * 1000.0, (4, 1))  # 32 images, each split of 8 holds 8 classes
    mean, std = fid.inception_score(one_hot, splits=4)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-9)
    # Certain but always the same class: p(y) is that class, IS = 1.
    same = np.zeros((10, 5))
    same[:, 2] = 1000.0
    assert fid.inception_score(same, splits=2)[0] == pytest.approx(1.0)
    # Splits of unequal scores: [2 classes | 4 classes] -> mean 3, population std 1.
    mixed = np.concatenate([np.tile(np.eye(4)[:2], (2, 1)), np.eye(4)]) * 1000.0
    assert fid.inception_score(mixed, splits=2) == pytest.approx((3.0, 1.0))


def test_inception_score_refuses_too_few_images():
    with pytest.raises(ValueError, match="N >= splits"):
        fid.inception_score(np.zeros((5, 10)), splits=10)


@pytest.fixture(scope="module")
def random_params():
    return inception.random_inception(jax.random.key(0))


def test_random_inception_shapes(random_params):
    pool, logits = jax.eval_shape(inception.inception_features, random_params,
                                  jax.ShapeDtypeStruct((3, 40, 50, 3), jnp.float32))
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)


def test_inputs_must_be_float_rgb(random_params):
    for shape, dtype, match in (((2, 8, 8, 3), jnp.uint8, "divide 8-bit images by 255"),
                                ((2, 8, 8, 1), jnp.float32, r"RGB images \(N, H, W, 3\)")):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(inception.inception_features, random_params,
                           jax.ShapeDtypeStruct(shape, dtype))


def test_missing_file_names_the_url_and_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        inception_files.load_inception(tmp_path / "nope.pth")
    for needle in ("nope.pth", inception_files.WEIGHTS_URL, "--config.eval.inception_weights",
                   "MIT"):
        assert needle in str(err.value)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_truncated_torch_file_names_the_first_missing_key(layout):
    """A file torch itself wrote (BatchNorm counters included) with one conv unit only."""
    path = FIXTURES / f"truncated_{layout}.pth"
    with pytest.raises(KeyError, match=r"Conv2d_2a_3x3\.conv\.weight") as err:
        inception_files.load_inception(path)
    assert str(path) in str(err.value)


def test_wrong_shape_is_named(tmp_path, seeded_state):
    state = dict(seeded_state)
    state["Mixed_6c.branch7x7_2.conv.weight"] = np.zeros((160, 160, 7, 1), np.float32)
    write_torch_zip(tmp_path / "w.pth", state)
    with pytest.raises(ValueError, match=r"Mixed_6c\.branch7x7_2\.conv\.weight.*"
                                         r"\(160, 160, 7, 1\).*\(160, 160, 1, 7\)"):
        inception_files.load_inception(tmp_path / "w.pth")


def test_extra_key_is_named(tmp_path, seeded_state):
    state = dict(seeded_state)
    state["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    write_torch_zip(tmp_path / "w.pth", state)
    with pytest.raises(KeyError, match=r"AuxLogits\.fc\.weight"):
        inception_files.load_inception(tmp_path / "w.pth")


def test_non_finite_weights_are_refused(tmp_path, seeded_state):
    state = dict(seeded_state)
    state["Mixed_7c.branch_pool.bn.running_var"] = np.full((192,), np.inf, np.float32)
    write_torch_zip(tmp_path / "w.pth", state)
    with pytest.raises(ValueError, match=r"Mixed_7c\.branch_pool\.bn\.running_var.*non-finite"):
        inception_files.load_inception(tmp_path / "w.pth")


def test_code_in_the_file_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("never",))

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"fc.weight": RunsCode()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load global"):
        inception_files.load_inception(tmp_path / "evil.pth")


@pytest.mark.slow
def test_eval_reports_fid_and_is_from_the_named_weights_file(tmp_path, weights_file):
    from pconv_jax.inference import evaluate
    results = evaluate.run(tiny_eval_config(inception_weights=str(weights_file), is_splits=4),
                           str(tmp_path), method="telea", metric_names="l1,fid,is",
                           progress=False)
    table = results["table"]
    assert table["all"]["fid"] > 0 and 1.0 <= table["all"]["is"] <= 4.0  # at most the splits' size
    assert all(np.isnan(table[c]["fid"]) for c in table if c != "all")  # 1 mask per cell
    assert "| FID |" in results["markdown"] and "at least 1,000 masks" in results["markdown"]


def test_eval_without_the_inception_file_names_it_and_writes_nothing(tmp_path):
    from pconv_jax.inference import evaluate
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05.*inception_weights"):
        evaluate.run(tiny_eval_config(), str(tmp_path), method="telea", metric_names="psnr,is",
                     progress=False)
    assert not list(tmp_path.iterdir())

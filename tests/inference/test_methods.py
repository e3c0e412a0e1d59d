"""The registry of ways to inpaint: each entry builds and fills; one more entry is offered by the
evaluation and the app."""

import numpy as np
import pytest

from pconv_jax.inference import app, evaluate, fill, methods
from tests.helpers.training import tiny_eval_config, tiny_workdir


def _image_and_mask():
    y, x = np.mgrid[0:40, 0:56] / 55
    image = np.stack([x, y, (x + y) / 2], -1).astype(np.float32)
    valid = np.ones((40, 56, 1), np.float32)
    valid[12:24, 20:36] = 0
    return image, valid


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("methods") / "w"
    tiny_workdir(path)  # a default-config network at step 0 (writing it takes seconds)
    return str(path)


def _assert_fills(method, name):
    image, valid = _image_and_mask()
    hole = valid[..., 0] == 0
    assert method.name == name and method.label and method.note
    out = method(image, valid)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~hole], image[~hole])
    assert np.abs(out[hole] - image[hole]).max() > 0  # the holes were filled


def test_the_registry_lists_the_four_methods_and_each_classical_one_builds_and_fills():
    assert methods.NAMES == ("model", "patchmatch", "telea", "ns")
    assert methods.SETTINGS_ONLY == ("patchmatch", "telea", "ns")
    for name in methods.SETTINGS_ONLY:
        method = methods.build(name)
        _assert_fills(method, name)
        assert method.training_size is None and not method.toy
    assert methods.build("telea").label == "OpenCV Telea"


@pytest.mark.slow
def test_the_network_entry_builds_from_a_workdir_and_fills(workdir):
    network = methods.build("model", workdir=workdir)
    _assert_fills(network, "model")
    assert network.label == "w (partial convolutions, step 0)" and network.step == 0
    assert network.training_size == 256  # the default config's side
    assert network.toy and "0 steps" in network.note  # but trained 0 steps


def test_a_network_is_a_toy_when_trained_on_small_images_or_briefly():
    assert [methods.is_toy(size, step) for size, step in
            ((256, 5000), (512, 100_000), (128, 100_000), (256, 4999))] == [
        False, False, True, True]


@pytest.mark.slow
def test_a_demo_sized_network_is_marked_a_toy(workdir):
    from pconv_jax import config as config_lib
    config = config_lib.load_workdir_config(workdir)
    config.data.image_size = 64
    method = methods.build("model", config=config, workdir=workdir, network_name="demo")
    assert method.toy and method.training_size == 64 and "toy" in method.note
    assert method.label == "demo (partial convolutions, step 0)"


def test_a_method_is_added_by_one_registry_entry(tmp_path, monkeypatch):
    def flat_grey(images, masks):
        return np.where(masks > 0.5, images, 0.5).astype(np.float32)

    monkeypatch.setitem(methods.REGISTRY, "grey", methods.Entry("Flat grey",
                                                                lambda request: flat_grey))
    monkeypatch.setattr(methods, "SETTINGS_ONLY", (*methods.SETTINGS_ONLY, "grey"))
    image, valid = _image_and_mask()
    assert (methods.build("grey")(image, valid)[valid[..., 0] == 0] == 0.5).all()
    assert [m.label for m in app.classical_methods()][-1] == "Flat grey"  # offered by the app
    results = evaluate.run(tiny_eval_config(), str(tmp_path), compare=["grey", "telea"],
                           metric_names="l1", progress=False)  # and by eval.py --compare
    assert [row["label"] for row in results["methods"]] == ["Flat grey", "OpenCV Telea"]
    photo = (image * 255).astype(np.uint8)
    out = fill.inpaint_photo(methods.build("grey"), photo, valid)
    assert (out[valid[..., 0] == 0] == 128).all()


def test_an_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'pm': choose from model, patchmatch"):
        methods.build("pm")
    with pytest.raises(ValueError, match="--workdir is required with --method model"):
        methods.build("model")

"""PatchMatch, the metric choice, FID / IS per cell, and `--compare`'s table of methods."""

import json

import numpy as np
import pytest

from pconv_jax.data import masks as masks_lib
from pconv_jax.data import nvidia_masks
from pconv_jax.evaluation import baselines, table1
from pconv_jax.evaluation.learned_metrics import LearnedMetrics
from pconv_jax.inference import evaluate, methods
from tests.helpers.training import tiny_eval_config


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    directory = tmp_path_factory.mktemp("test_masks")
    masks_lib.write_test_set(str(directory), per_cell=2, size=32, seed=0)
    return nvidia_masks.scan_test_masks(str(directory))


def _textured(count=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(7 * x + i) * np.cos(5 * y) for i in range(3)], -1) * 0.4 + 0.5
    return np.clip(base[None] + 0.05 * rng.standard_normal((count, size, size, 3)),
                   0, 1).astype(np.float32)


def test_patchmatch_keeps_known_pixels_fills_holes_and_repeats_under_its_seed(test_set):
    images = _textured()
    masks = test_set.load([4, 9, 20], (32, 32))  # bins (0.1,0.2], (0.2,0.3], (0.5,0.6]
    holes = masks[..., 0] < 0.5
    filled = baselines.inpaint_patchmatch(images, masks, patch_radius=2, seed=3)
    assert filled.shape == images.shape and filled.dtype == np.float32
    np.testing.assert_array_equal(filled[~holes], images[~holes])  # bit-exact known pixels
    # Holes get content copied from the image: no longer the input, not one flat colour, and in
    # the image's range of colours.
    assert np.abs(filled[holes] - images[holes]).mean() > 0.01
    assert filled[holes].std(axis=0).min() > 0.05
    assert filled[holes].min() >= images.min() - 1 / 255
    again = baselines.inpaint_patchmatch(images, masks, patch_radius=2, seed=3)
    np.testing.assert_array_equal(again, filled)
    # per image: the same image filled alone gives the same pixels
    alone = baselines.inpaint_patchmatch(images[1:2], masks[1:2], patch_radius=2, seed=3)
    np.testing.assert_array_equal(alone[0], filled[1])
    other_seed = baselines.inpaint_patchmatch(images, masks, patch_radius=2, seed=4)
    assert (other_seed != filled).any()


def test_unknown_method_and_metric_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'pm': choose from model, patchmatch"):
        methods.build("pm")
    assert table1.parse_metrics("ssim, L1,fid") == ("l1", "ssim", "fid")
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['psnrr'\].*l1,psnr,ssim"):
        table1.parse_metrics("l1,psnrr")
    with pytest.raises(ValueError, match="unknown method 'telae'.*path of a training workdir"):
        evaluate.run(tiny_eval_config(), str(tmp_path), compare=["model", "telae"], progress=False)
    with pytest.raises(ValueError, match=r"named twice"):
        evaluate.run(tiny_eval_config(), str(tmp_path), compare=["ns", "ns"], progress=False)
    assert not list(tmp_path.iterdir())  # nothing was written


def _stand_in_inception(images):
    """Features and logits computed from pixel statistics: a deterministic stand-in network."""
    images = np.asarray(images, np.float64)
    pooled = [images.mean(axis=(1, 2)), images.std(axis=(1, 2)),
              images[:, ::2].mean(axis=(1, 2)), (images**2).mean(axis=(1, 2))]
    pool = np.concatenate(pooled, -1)  # (N, 12)
    logits = 10 * np.concatenate([pool, -pool], -1)
    return pool.astype(np.float32), logits.astype(np.float32)


def _fid(a, b):
    """Written from the formula, independently of the code under test."""
    from scipy import linalg
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_and_is_over_all_masks_and_per_cell_only_with_enough_masks(test_set, monkeypatch):
    images = _textured(count=5)
    learned = LearnedMetrics(inception=_stand_in_inception, is_splits=2)
    names = ("l1", "fid", "is")
    reference = table1.reference_features(images, learned, batch_size=4)
    assert reference["inception_pool"].shape == (5, 12)

    def run(inpaint):
        per_mask = table1.evaluate(inpaint, images, test_set, batch_size=5, metric_names=names,
                                   learned=learned, progress=False)
        assert per_mask["inception_pool"].shape == (24, 12)
        return per_mask, table1.summarize(per_mask, test_set, names, learned, reference)

    _, table = run(lambda i, m: i)  # the identity: composites equal their images
    assert abs(table["all"]["fid"]) < 1e-3 and table["all"]["l1"] == 0
    assert all(np.isnan(table[c]["fid"]) and np.isnan(table[c]["is"])
               for c in table if c != "all")
    per_mask, table = run(lambda i, m: i * m)  # black holes
    truth = reference["inception_pool"][per_mask["image_index"]]
    assert table["all"]["fid"] == pytest.approx(_fid(per_mask["inception_pool"], truth),
                                                rel=1e-3)
    assert table["all"]["fid"] > 0.01 and table["all"]["is"] >= 1.0
    monkeypatch.setattr(table1, "MIN_SET_METRIC_MASKS", 2)
    _, table = run(methods.build("telea").inpaint)
    assert all(np.isfinite(table[c]["is"]) for c in table)
    text = table1.format_table(table)
    assert "| FID |" in text and "| IScore |" in text and "at least 2 masks" in text


def test_compare_writes_one_table_with_a_row_per_method_on_identical_pairs(tmp_path, capsys):
    results = evaluate.run(tiny_eval_config(patchmatch_patch_radius=2), str(tmp_path),
                           compare=["patchmatch", "telea"], metric_names="l1,psnr",
                           progress=False)
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [m["label"] for m in saved["methods"]] == ["PatchMatch", "OpenCV Telea"]
    assert saved["metrics"] == ["l1", "psnr"] and saved["num_masks"] == 12
    for method in saved["methods"]:
        assert set(method["table"]["all"]) == {"count", "l1", "psnr"}
        assert method["per_mask"]["image_index"] == [j % 5 for j in range(12)]
    markdown = (tmp_path / "comparison.md").read_text()
    assert markdown.strip() == results["markdown"].strip() and results["markdown"] in out
    # the paper's layout: a block per metric, a row per method, the cells as columns
    l1_block = markdown.split("*L1 (%)*")[1].split("*PSNR (dB)*")[0]
    rows = [line for line in l1_block.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | (0.01,0.1] N |") and rows[0].endswith("| all |")
    assert rows[1].startswith("| PatchMatch |") and rows[2].startswith("| OpenCV Telea |")
    all_l1 = saved["methods"][0]["table"]["all"]["l1"]
    assert rows[1].endswith(f"| {all_l1:.2f} |")
    # the same pairs as a single-method run
    single = evaluate.run(tiny_eval_config(), str(tmp_path), method="telea", metric_names="l1,psnr",
                          progress=False)
    assert single["table"] == saved["methods"][1]["table"]
    assert not (tmp_path / "results.json").exists()


def test_fill_at_training_size_runs_a_network_on_crops_at_its_training_side(tmp_path,
                                                                            monkeypatch):
    seen = []

    def small_network(request):  # a stand-in network trained at 16 px that records its inputs
        def inpaint(images, masks):
            seen.append(images.shape[1:3])
            return np.where(masks > 0.5, images, 0.5).astype(np.float32)
        return methods.Method("net16", "net16", inpaint, training_size=16)

    monkeypatch.setitem(methods.REGISTRY, "net16", methods.Entry("net16", small_network))
    evaluate.run(tiny_eval_config(), str(tmp_path), method="net16", metric_names="l1",
                 progress=False)
    assert set(seen) == {(32, 32)}  # the paper's protocol: whole images
    seen.clear()
    evaluate.run(tiny_eval_config(fill_at_training_size=True), str(tmp_path), method="net16",
                 metric_names="l1", progress=False)
    assert seen and all(max(shape) <= 16 for shape in seen), seen

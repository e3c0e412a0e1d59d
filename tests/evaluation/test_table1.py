"""The Table 1 protocol: cells and counts, deterministic pairing, baselines, results files."""

import json
import os

import numpy as np
import pytest

from pconv_jax.data import images, masks, nvidia_masks
from pconv_jax.evaluation import table1
from pconv_jax.inference import evaluate, methods
from tests.helpers import REPO
from tests.helpers.full_disk import fill_disk_after
from tests.helpers.training import tiny_eval_config


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    directory = tmp_path_factory.mktemp("test_masks")
    masks.write_test_set(str(directory), per_cell=2, size=32, seed=0)
    return nvidia_masks.scan_test_masks(str(directory))


def _images(count=5, size=32):
    # smooth images so that the classical methods have something to continue
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return np.stack([np.stack([x, y, (x + y) / 2 * (i + 1) / count], -1)
                     for i in range(count)]).astype(np.float32)


def test_scan_reads_the_nvidia_layout(test_set):
    assert len(test_set) == 24
    np.testing.assert_array_equal(test_set.bins, np.repeat(np.arange(6), 4))
    assert test_set.labels[:4] == ("N", "N", "B", "B")


def test_generated_masks_land_in_their_bins_at_eval_resolution(test_set):
    loaded = test_set.load(range(len(test_set)), (32, 32))
    ratios = 1 - loaded.mean(axis=(1, 2, 3))
    for ratio, b in zip(ratios, test_set.bins):
        lo, hi = masks.HOLE_RATIO_BINS[b]
        assert lo < ratio <= hi


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_classical_baselines_fill_all_cells_with_finite_metrics(test_set, method):
    images = _images()
    per_mask = table1.evaluate(methods.build(method).inpaint, images, test_set,
                                   batch_size=5, progress=False)
    np.testing.assert_array_equal(per_mask["image_index"], np.arange(24) % 5)
    table = table1.summarize(per_mask, test_set)
    assert len(table) == 13 and table["all"]["count"] == 24
    for name, cell in table.items():
        assert cell["count"] == (24 if name == "all" else 2)
        assert all(np.isfinite(cell[m]) for m in table1.DEFAULT_METRICS)
    # bigger holes are harder: the largest bin is worse than the smallest
    assert table["(0.5,0.6] N"]["l1"] > table["(0.01,0.1] N"]["l1"]
    assert table["(0.5,0.6] N"]["psnr"] < table["(0.01,0.1] N"]["psnr"]


def test_identity_inpainter_gives_perfect_scores_and_the_pairing_is_fixed(test_set):
    images = _images()
    seen = []

    def cheat(batch_images, batch_masks):  # returns the ground truth itself
        seen.append(batch_images.copy())
        return batch_images

    per_mask = table1.evaluate(cheat, images, test_set, batch_size=7, progress=False)
    np.testing.assert_array_equal(per_mask["l1"], 0.0)
    np.testing.assert_array_equal(per_mask["psnr"], 100.0)
    np.testing.assert_allclose(per_mask["ssim"], 1.0, atol=1e-6)
    batches = np.concatenate(seen)[:24]  # the last batch is padded to 7
    np.testing.assert_array_equal(batches, images[np.arange(24) % 5])


def test_a_metric_added_by_one_entry_is_computed_parsed_and_tabled(test_set, monkeypatch):
    from pconv_jax.evaluation import metrics
    squared = metrics.Metric("MSE", "{:.5f}", lambda a, b: ((a - b) ** 2).mean(axis=(1, 2, 3)))
    monkeypatch.setitem(metrics.METRICS, "mse", squared)
    images = _images()

    def grey(batch_images, batch_masks):
        return np.where(batch_masks > 0.5, batch_images, np.float32(0.5))

    names = table1.parse_metrics("l1,mse")
    assert names == ("l1", "mse")
    per_mask = table1.evaluate(grey, images, test_set, batch_size=8, progress=False,
                               metric_names=names)
    holes = 1 - test_set.load(range(len(test_set)), (32, 32))
    want = (((images[np.arange(24) % 5] - 0.5) * holes) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(per_mask["mse"], want, rtol=1e-5)
    text = table1.format_table(table1.summarize(per_mask, test_set, metric_names=names))
    assert "| MSE |" in text and "| L1 (%) |" in text and "PSNR" not in text


def test_results_files_and_table(tmp_path, test_set):
    per_mask = table1.evaluate(methods.build("telea").inpaint, _images(), test_set,
                                   batch_size=8, progress=False)
    table = table1.summarize(per_mask, test_set)
    markdown = table1.format_table(table, "t")
    table1.write_results(dict(title="t", table=table, markdown=markdown), str(tmp_path))
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["table"]["(0.1,0.2] B"]["count"] == 2
    text = (tmp_path / "results.md").read_text()
    assert "| L1 (%) |" in text and "(0.5,0.6] B" in text and "| masks | 2 |" in text


def test_a_directory_that_is_not_a_test_set_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="12·K"):
        nvidia_masks.scan_test_masks(str(tmp_path))


def test_run_with_a_baseline_writes_its_own_results_files(tmp_path, capsys):
    results = evaluate.run(tiny_eval_config(), str(tmp_path), method="ns", progress=False)
    assert results["num_masks"] == 12 and results["num_images"] == 5
    assert (tmp_path / "test_masks_32x32_k1_s0").is_dir()
    loaded = json.loads((tmp_path / "results_ns.json").read_text())
    assert [loaded["table"][c]["count"] for c in loaded["table"]] == [1] * 12 + [12]
    assert loaded["per_mask"]["image_index"] == [j % 5 for j in range(12)]
    assert not (tmp_path / "results.json").exists()  # the network's file is left alone
    assert "| SSIM |" in capsys.readouterr().out


@pytest.mark.slow
def test_an_untrained_network_fills_every_cell(test_set):
    from flax import nnx

    from pconv_jax.inference.model_inpainter import ModelInpainter
    from pconv_jax.network.unet import PConvUNet
    model = PConvUNet(depth=3, widths=(4, 8, 8), rngs=nnx.Rngs(0))
    per_mask = table1.evaluate(ModelInpainter(model), _images(), test_set,
                                   batch_size=8, progress=False)
    table = table1.summarize(per_mask, test_set)
    assert [table[c]["count"] for c in table] == [2] * 12 + [24]
    assert all(np.isfinite(table["all"][m]) for m in table1.DEFAULT_METRICS)
    assert 0 < table["all"]["l1"] < 100 and table["all"]["psnr"] < 100


def test_unwritable_workdir_fails_before_evaluating(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated although the results cannot be written")

    monkeypatch.setattr(table1, "evaluate", must_not_run)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="cannot write the results into the workdir"):
        evaluate.run(tiny_eval_config(), str(tmp_path / "a_file" / "work"), method="telea",
                   progress=False)


def test_table_is_printed_before_the_results_are_written(tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(table1, "write_results", disk_full)
    with pytest.raises(OSError, match="No space left"):
        evaluate.run(tiny_eval_config(), str(tmp_path), method="telea", progress=False)
    assert "| PSNR (dB) |" in capsys.readouterr().out


def test_a_full_disk_keeps_the_previous_results_and_names_the_disk(tmp_path, monkeypatch,
                                                                   capsys):
    evaluate.run(tiny_eval_config(), str(tmp_path), method="telea", progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    written = [str(tmp_path / "results_telea.json"), str(tmp_path / "results_telea.md")]
    assert lines[-1] == f"wrote {written[0]} and {written[1]}"  # the command names its files
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    fill_disk_after(monkeypatch, 100)
    with pytest.raises(OSError, match=r"disk full: could not write .*results_telea.json and "
                                      r".*results_telea.md \(all left as they were\).*free"):
        evaluate.run(tiny_eval_config(), str(tmp_path), method="telea", metric_names="l1",
                     progress=False)
    monkeypatch.undo()
    assert "| L1 (%) |" in capsys.readouterr().out  # the table is on screen all the same
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # old results intact, no temporary file left
    assert "ssim" in json.loads(after["results_telea.json"])["metrics"]


def test_a_full_disk_before_evaluating_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    fill_disk_after(monkeypatch, 0)
    with pytest.raises(OSError, match=r"disk full: could not write the results into the workdir "
                                      r".*\(the disk mounted at .* free\)"):
        evaluate.run(tiny_eval_config(), str(tmp_path), method="telea", progress=False)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []  # no write-probe file left behind


def test_a_full_disk_while_generating_test_masks_leaves_no_partial_set(tmp_path, monkeypatch):
    fill_disk_after(monkeypatch, 1000)  # a few of the 12 PNGs fit
    with pytest.raises(OSError, match="disk full: could not write the test masks"):
        table1.prepare_test_masks(tiny_eval_config(), str(tmp_path), (32, 32))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    assert len(table1.prepare_test_masks(tiny_eval_config(), str(tmp_path), (32, 32))) == 12


@pytest.mark.slow
def test_end_to_end_tiny_checkpoint_eval_and_inpaint_command(tmp_path, compiled_steps):
    """train_and_evaluate a few steps, eval.py's protocol on it, then the inpaint command."""
    import warnings

    import cv2
    import ml_collections

    from pconv_jax import config as config_lib
    from pconv_jax.training import loop
    from tests.helpers.commands import run_inpaint
    repo = REPO
    config = ml_collections.ConfigDict(
        config_lib.load_config(str(repo / "configs" / "demo.py")).to_dict())  # unlocked copy
    config.data.update(image_size=32, batch_size=8, prefetch=1)
    config.model.update(depth=2, base_width=4, max_width=8)
    config.train.update(num_steps=2, log_every_steps=1, checkpoint_every_steps=2,
                        eval_every_steps=2, eval_batch_size=2, async_checkpoints=False)
    config.eval.update(masks_per_cell=1, batch_size=4, num_images=3)
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir, steps=compiled_steps(config))

    results = evaluate.run(config, workdir, progress=False)
    loaded = json.loads((tmp_path / "run" / "results.json").read_text())
    assert loaded["method"] == "model" and loaded["step"] == 2 and results["num_images"] == 3
    assert [loaded["table"][c]["count"] for c in loaded["table"]] == [1] * 12 + [12]
    assert all(np.isfinite(loaded["table"]["all"][m]) for m in table1.DEFAULT_METRICS)
    assert "| PSNR (dB) |" in (tmp_path / "run" / "results.md").read_text()

    # --compare: this workdir's network, another workdir's (restored with its own config.json;
    # of the same name, so the rows name their paths) and a baseline, on the same pairs
    import shutil
    other = tmp_path / "elsewhere" / "demo"  # named as the config's experiment
    shutil.copytree(workdir, other)
    compared = evaluate.run(config, workdir, compare=["model", str(other), "ns"],
                            progress=False)
    rows = compared["methods"]
    assert [row["label"] for row in rows] == [
        "model: demo (partial convolutions, step 2)",
        f"{other}: demo (partial convolutions, step 2)", "OpenCV Navier-Stokes"]
    assert rows[0]["table"] == rows[1]["table"] == loaded["table"]  # the same network
    assert f"| {other}: demo (partial" in (tmp_path / "run" / "comparison.md").read_text()

    # the inpaint command rebuilds the model from the workdir's config.json
    rgb = np.random.default_rng(0).integers(0, 256, (21, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), rgb)
    holes = np.zeros((21, 30), np.uint8)
    holes[5:12, 8:20] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), holes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # same size: no resize warning
        run_inpaint(["--workdir", workdir, "--image", str(tmp_path / "photo.png"),
                     "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png")])
    out = cv2.imread(str(tmp_path / "out.png"))
    assert out.shape == (21, 30, 3)
    np.testing.assert_array_equal(out[holes == 0], rgb[holes == 0])


def test_run_accepts_a_correctly_labelled_nvidia_layout_and_lists_left_out_files(tmp_path):
    """A set laid out like NVIDIA's whose B masks only come close to the border (2 px at 64 px,
    where N masks keep 6 px free): every file is used. An unreadable file is listed in
    results.json with its path and the reason."""
    directory = tmp_path / "testing_mask_dataset"
    k, size = 2, 64
    for index in range(12 * k):
        bin_index, label = masks.bin_and_border(index, k)
        hole = masks.generate_mask((9, index), size, hole_ratio_range=masks.HOLE_RATIO_BINS[
            bin_index], border="avoid")[..., 0] == 0
        if label == "B":  # move the hole up until it is 2 px from the top border
            hole = np.roll(hole, 2 - int(np.flatnonzero(hole.any(axis=1))[0]), axis=0)
            assert masks.border_distance(hole) == 2
        images.write_mask(str(directory / f"{index:05d}.png"), (~hole)[..., None], "white")
    config = tiny_eval_config(test_masks=str(directory))
    results = evaluate.run(config, str(tmp_path), method="telea", progress=False)
    assert results["num_masks"] == 12 * k and results["left_out"] == []
    assert [results["table"][c]["count"] for c in results["table"]] == [k] * 12 + [12 * k]

    (directory / "00005.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="1 of 24 test masks"):
        evaluate.run(config, str(tmp_path), method="telea", progress=False)
    loaded = json.loads((tmp_path / "results_telea.json").read_text())
    assert loaded["num_masks"] == 12 * k - 1
    [left_out] = loaded["left_out"]
    assert left_out["path"] == str(directory / "00005.png")
    assert "unreadable" in left_out["reason"]

"""The paper's Table 1 protocol: metrics of the composite per hole-ratio bin x {N, B}.

Protocol (deterministic, so two methods are compared on identical pairs):

- Test masks: a directory in the NVIDIA test-set layout (00000.png, 00001.png, ..., white = hole,
  blocks of 2K files per hole-ratio bin, the first K of a block with no hole pixel within
  `masks.border_margin` of the border (50 px at 512 px): N, the next K: B), or, when
  `config.eval.test_masks` is '', our own set of 6 x 2 x K masks
  written by `pconv_jax.data.masks.write_test_set` into `<workdir>/test_masks_<size>_k<K>` at the
  evaluation resolution. A mask's bin and N/B label come from its position in that layout;
  files whose pixels contradict it, or that cannot be read, are left out and listed with the
  reason in results.json.
- Masks of another size than the images are resized nearest-neighbour (never interpolated).
- Images: the first `config.eval.num_images` held-out images of the config's data source.
  Mask file j (00000.png = 0) is paired with image j mod num_images.
- Each method (a network, PatchMatch, or OpenCV's Telea / Navier-Stokes) fills the holes (a
  network's unreached hole pixels as `pconv_jax.inference.model_inpainter.ModelInpainter` does); the
  metrics are computed on the composite (known pixels pasted back), clipped to [0, 1], against
  the image, over the whole image at the evaluation resolution.
- Metrics: L1 (%), PSNR, SSIM (`metrics`; no weights needed, the default) and LPIPS, FID and
  the Inception Score (`learned_metrics`; weights files, when asked). Cells report means over
  their masks; FID and IS are set statistics: over all masks, and per cell only from
  `MIN_SET_METRIC_MASKS` masks up.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from pconv_jax import files
from pconv_jax.data import masks as masks_lib
from pconv_jax.data import nvidia_masks
from pconv_jax.evaluation import metrics
from pconv_jax.evaluation.learned_metrics import SET_METRICS, LearnedMetrics
from pconv_jax.inpainter import Inpainter

DEFAULT_METRICS = metrics.IMAGE_METRICS  # the metrics that need no weights files
MIN_SET_METRIC_MASKS = 1000  # FID / IS of a single cell only from this many masks
LABELS = ("N", "B")


def cell_name(bin_index: int, label: str) -> str:
    """Column title of a Table 1 cell, e.g. '(0.1,0.2] N'."""
    lo, hi = masks_lib.HOLE_RATIO_BINS[bin_index]
    return f"({lo:g},{hi:g}] {label}"


# ---------------------------------------------------------------------------- test masks

def prepare_test_masks(config: ml_collections.ConfigDict, workdir: str,
                       size: tuple[int, int]) -> nvidia_masks.TestMaskSet:
    """The configured test set, generating our own into the workdir when none is named."""
    directory = config.eval.test_masks
    if not directory:
        k = config.eval.masks_per_cell
        directory = os.path.join(
            workdir, f"test_masks_{size[0]}x{size[1]}_k{k}_s{config.eval.mask_seed}")
        expected = 2 * masks_lib.NUM_BINS * k
        if len(glob.glob(os.path.join(directory, "*.png"))) != expected:
            if size[0] != size[1]:
                raise ValueError(f"generating a test set needs square images, got {size}")
            logging.info("writing %d test masks to %s", expected, directory)
            _write_test_set_atomically(directory, per_cell=k, size=size[0],
                                       seed=config.eval.mask_seed)
    return nvidia_masks.scan_test_masks(directory)


def _write_test_set_atomically(directory: str, **kwargs) -> None:
    """`write_test_set` into a temporary folder renamed to `directory` when complete, so that a
    full disk or a kill never leaves a set with missing or truncated files behind."""
    parent = os.path.dirname(os.path.abspath(directory))
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    try:
        masks_lib.write_test_set(staging, **kwargs)
        if os.path.isdir(directory):  # a set with the wrong file count (`prepare_test_masks`)
            shutil.rmtree(directory)
        os.rename(staging, directory)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if files.is_disk_full(err):
            raise files.disk_full_error(parent, f"the test masks {directory}") from err
        raise


# ---------------------------------------------------------------------------- metrics

def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """'l1,psnr,ssim,lpips,fid,is' (or a sequence) -> the names in table order, checked."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(metrics.METRICS))
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names!r}: choose from "
                         f"{','.join(metrics.METRICS)} (comma-separated)")
    return tuple(n for n in metrics.METRICS if n in names)


# ---------------------------------------------------------------------------- protocol

def evaluate(inpaint: Inpainter, images: np.ndarray, test_masks: nvidia_masks.TestMaskSet, *,
             batch_size: int = 8, psnr_cap: float = metrics.PSNR_CAP,
             metric_names: Sequence[str] = DEFAULT_METRICS,
             learned: LearnedMetrics | None = None, progress: bool = True
             ) -> dict[str, np.ndarray]:
    """Per-mask values: mask file j (j.png) filled on image j mod len(images).

    Returns {'hole_ratio', 'image_index'} and, for each requested per-image metric, its
    values, each (M,) for M masks; with FID or IS requested, also the Inception features
    'inception_pool' (M, 2048) and 'inception_logits' (M, 1008) of the composites. Batches
    are padded to `batch_size` (repeating the last pair) so the networks compile once.
    """
    per_image = [n for n in metric_names if n not in SET_METRICS]
    if (learned is None or learned.lpips is None) and "lpips" in metric_names:
        raise ValueError("LPIPS requested without its network (LearnedMetrics.from_config)")
    wants_features = any(n in SET_METRICS for n in metric_names)
    if wants_features and (learned is None or learned.inception is None):
        raise ValueError("FID / IS requested without the Inception network")
    num_masks, num_images = len(test_masks), len(images)
    size = images.shape[1:3]
    out = {name: np.zeros(num_masks, np.float64) for name in per_image + ["hole_ratio"]}
    out["image_index"] = test_masks.file_indices % num_images
    bar = tqdm(total=num_masks, unit="mask", desc="evaluating", file=sys.stderr,
               disable=not progress)
    for idx, padded in _padded_batches(num_masks, batch_size):
        batch_masks = test_masks.load(padded, size)
        batch_images = images[out["image_index"][padded]]
        filled = np.clip(inpaint(batch_images, batch_masks), 0.0, 1.0)
        computed = tuple(n for n in per_image if metrics.METRICS[n].per_image)
        values = dict(metrics.image_metrics(filled, batch_images, computed, psnr_cap=psnr_cap))
        if "lpips" in per_image:
            values["lpips"] = learned.lpips(filled, batch_images)
        for name in per_image:
            out[name][idx] = np.asarray(values[name])[: len(idx)]
        if wants_features:
            for name, value in learned.features(filled).items():
                out.setdefault(name, np.zeros((num_masks,) + value.shape[1:], np.float32))
                out[name][idx] = value[: len(idx)]
        out["hole_ratio"][idx] = 1.0 - batch_masks[: len(idx)].mean(axis=(1, 2, 3))
        bar.update(len(idx))
    bar.close()
    return out


def reference_features(images: np.ndarray, learned: LearnedMetrics | None,
                       batch_size: int = 8) -> dict[str, np.ndarray]:
    """The Inception features of the ground-truth images (FID's reference set), or {}."""
    if learned is None or learned.inception is None:
        return {}
    parts = [learned.features(images[padded])["inception_pool"][: len(idx)]
             for idx, padded in _padded_batches(len(images), batch_size)]
    return {"inception_pool": np.concatenate(parts)}


def _padded_batches(count: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, the indices padded to `batch_size` by repeating the last) per batch of
    range(count): one batch shape, so the networks compile once."""
    for start in range(0, count, batch_size):
        idx = np.arange(start, min(start + batch_size, count))
        yield idx, np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])


def summarize(per_mask: dict[str, np.ndarray], test_masks: nvidia_masks.TestMaskSet,
              metric_names: Sequence[str] = DEFAULT_METRICS,
              learned: LearnedMetrics | None = None,
              reference: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """Table 1 cells: {cell name: {'count', metric: value, ...}}, plus 'all'.

    Per-image metrics are means over the cell's masks. FID (the composites against their
    ground-truth images, each mask's own) and IS are computed over all masks, and per cell only
    where a cell has at least `MIN_SET_METRIC_MASKS` masks (fewer give biased, noisy values);
    other cells hold NaN.
    """
    labels = np.asarray(test_masks.labels)
    selections = {cell_name(b, label): (test_masks.bins == b) & (labels == label)
                  for b in range(masks_lib.NUM_BINS) for label in LABELS}
    selections["all"] = np.ones(len(test_masks), bool)
    set_names = [n for n in metric_names if n in SET_METRICS]
    table = {}
    for name, selected in selections.items():
        count = int(selected.sum())
        cell = {"count": count}
        for metric in metric_names:
            cell[metric] = math.nan
            if metric not in SET_METRICS and count:
                cell[metric] = float(per_mask[metric][selected].mean())
        if set_names and count and (name == "all" or count >= MIN_SET_METRIC_MASKS):
            cell.update(learned.set_scores(
                set_names, per_mask["inception_pool"][selected],
                per_mask["inception_logits"][selected],
                reference["inception_pool"][per_mask["image_index"][selected]]))
        table[name] = cell
    return table


def _format(metric: str, value: float) -> str:
    return "–" if value is None or math.isnan(value) else metrics.METRICS[metric].fmt.format(value)


def _set_metric_note(metric_names: Sequence[str]) -> list[str]:
    shown = [metrics.METRICS[n].title for n in metric_names if n in SET_METRICS]
    if not shown:
        return []
    return ["", f"{' and '.join(shown)}: over all masks, and per cell only where a cell has "
                f"at least {MIN_SET_METRIC_MASKS:,} masks (–: fewer)."]


def metric_names_of(table: dict[str, dict]) -> tuple[str, ...]:
    """The metrics a summarized table holds, in table order."""
    return tuple(n for n in metrics.METRICS if n in table["all"])


def format_table(table: dict[str, dict], title: str = "") -> str:
    """A Markdown table shaped like the paper's Table 1 (rows metrics, columns bin x N/B)."""
    columns = list(table)
    names = metric_names_of(table)
    lines = [f"**{title}**", ""] if title else []
    lines.append("| | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name in names:
        row = [_format(name, table[c][name]) for c in columns]
        lines.append(f"| {metrics.METRICS[name].title} | " + " | ".join(row) + " |")
    lines.append("| masks | " + " | ".join(str(table[c]["count"]) for c in columns) + " |")
    return "\n".join(lines + _set_metric_note(names))


def format_comparison(tables: dict[str, dict[str, dict]], title: str = "") -> str:
    """The paper's layout: one block per metric, a row per method, columns bin x N/B."""
    first = next(iter(tables.values()))
    columns = list(first)
    names = metric_names_of(first)
    lines = [f"**{title}**", ""] if title else []
    for name in names:
        lines += [f"*{metrics.METRICS[name].title}*", "",
                  "| method | " + " | ".join(columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for method, table in tables.items():
            row = [_format(name, table[c][name]) for c in columns]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
    lines.append("Masks per column: " + ", ".join(
        f"{c} {first[c]['count']}" for c in columns) + ".")
    return "\n".join(lines + _set_metric_note(names))


def results_name(method: str) -> str:
    """'results' for the network, 'results_<method>' for the baselines."""
    return "results" if method == "model" else f"results_{method}"


def write_results(results: dict, workdir: str, name: str = "results") -> list[str]:
    """Writes <name>.json (everything, NaN as null) and <name>.md (the table) into the workdir,
    atomically (a failed write leaves both old files); returns their paths."""
    os.makedirs(workdir, exist_ok=True)
    paths = [os.path.join(workdir, f"{name}.json"), os.path.join(workdir, f"{name}.md")]
    files.write_texts_atomically({paths[0]: json.dumps(_nan_to_none(results), indent=1),
                                  paths[1]: results["markdown"] + "\n"})
    return paths


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value

"""The paper's Table 1 protocol: L1 / PSNR / SSIM of the composite per hole-ratio bin x {N, B}.

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
- Each method (the network, or OpenCV's Telea / Navier-Stokes) fills the holes (the network's
  unreached hole pixels as `pconv_jax.inference.inpaint.ModelInpainter` does); the metrics are
  computed on the composite (known pixels pasted back), clipped to [0, 1], against the image,
  over the whole image at the evaluation resolution. Cells report means over their masks.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import sys
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from pconv_jax.data import masks as masks_lib
from pconv_jax.data import nvidia_masks
from pconv_jax.evaluation import baselines, metrics

METRICS = ("l1", "psnr", "ssim")
METRIC_TITLES = {"l1": "L1 (%)", "psnr": "PSNR (dB)", "ssim": "SSIM"}
LABELS = ("N", "B")
METHODS = ("model",) + baselines.CLASSICAL_METHODS  # what the commands accept

# images (B, H, W, 3), masks (B, H, W, 1) 1 = valid  ->  composites (B, H, W, 3) in [0, 1]
Inpainter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def cell_name(bin_index: int, label: str) -> str:
    """Column title of a Table 1 cell, e.g. '(0.1,0.2] N'."""
    lo, hi = masks_lib.HOLE_RATIO_BINS[bin_index]
    return f"({lo:g},{hi:g}] {label}"


# ---------------------------------------------------------------------------- test masks

@dataclasses.dataclass(frozen=True)
class EvalMaskSet:
    """A test mask set in NVIDIA test-set order, with each file's bin and N/B label."""
    records: tuple[nvidia_masks.TestMaskRecord, ...]
    left_out: tuple[nvidia_masks.LeftOutFile, ...] = ()

    @classmethod
    def scan(cls, directory: str) -> EvalMaskSet:
        """Reads a test mask directory (NVIDIA test set or `write_test_set` output).

        Files whose pixels contradict their label (hole ratio outside the bin, wrong N/B) or
        that cannot be read are left out with a warning (see `nvidia_masks.scan_test_masks`).
        """
        scanned = nvidia_masks.scan_test_masks(directory)
        if not scanned.records:
            left_out = [str(f) for f in scanned.left_out]
            shown = "; ".join(left_out[:2])
            more = f"; and {len(left_out) - 2} more" if len(left_out) > 2 else ""
            raise ValueError(f"no usable masks in {directory} ({len(left_out)} files left "
                             f"out: {shown}{more})")
        return cls(tuple(scanned.records), tuple(scanned.left_out))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def file_indices(self) -> np.ndarray:
        """Each record's position in the set's file numbering (00000.png = 0)."""
        return np.array([r.index for r in self.records])

    @property
    def bins(self) -> np.ndarray:
        return np.array([r.bin_index for r in self.records])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(r.border for r in self.records)

    def load(self, indices: Sequence[int], size: tuple[int, int]) -> np.ndarray:
        """Masks (B, H, W, 1) float32, 1 = valid, resized nearest-neighbour to `size`."""
        return nvidia_masks.load_test_masks([self.records[i] for i in indices], tuple(size))


def prepare_test_masks(config: ml_collections.ConfigDict, workdir: str,
                       size: tuple[int, int]) -> EvalMaskSet:
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
            masks_lib.write_test_set(directory, per_cell=k, size=size[0],
                                     seed=config.eval.mask_seed)
    return EvalMaskSet.scan(directory)


# ---------------------------------------------------------------------------- inpainters

def classical_inpainter(method: str, radius: int = 3) -> Inpainter:
    """OpenCV's Telea ('telea') or Navier-Stokes ('ns') inpainting."""
    return lambda images, masks: baselines.inpaint_classical(images, masks, method, radius)


# ---------------------------------------------------------------------------- protocol

def evaluate(inpaint: Inpainter, images: np.ndarray, test_masks: EvalMaskSet, *,
             batch_size: int = 8, psnr_cap: float = metrics.PSNR_CAP,
             progress: bool = True) -> dict[str, np.ndarray]:
    """Per-mask metrics: mask file j (j.png) filled on image j mod len(images).

    Returns {'l1', 'psnr', 'ssim', 'hole_ratio', 'image_index'}, each (M,) for M masks. Batches
    are padded to `batch_size` (repeating the last pair) so the network compiles once.
    """
    num_masks, num_images = len(test_masks), len(images)
    size = images.shape[1:3]
    out = {name: np.zeros(num_masks, np.float64) for name in METRICS + ("hole_ratio",)}
    out["image_index"] = test_masks.file_indices % num_images
    bar = tqdm(total=num_masks, unit="mask", desc="evaluating", file=sys.stderr,
               disable=not progress)
    for start in range(0, num_masks, batch_size):
        idx = np.arange(start, min(start + batch_size, num_masks))
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
        batch_masks = test_masks.load(padded, size)
        batch_images = images[out["image_index"][padded]]
        filled = inpaint(batch_images, batch_masks)
        values = metrics.image_metrics(filled, batch_images, psnr_cap=psnr_cap)
        for name in METRICS:
            out[name][idx] = np.asarray(values[name])[: len(idx)]
        out["hole_ratio"][idx] = 1.0 - batch_masks[: len(idx)].mean(axis=(1, 2, 3))
        bar.update(len(idx))
    bar.close()
    return out


def summarize(per_mask: dict[str, np.ndarray], test_masks: EvalMaskSet) -> dict[str, dict]:
    """Table 1 cells: {cell name: {'count', 'l1', 'psnr', 'ssim'}}, plus 'all'."""
    labels = np.asarray(test_masks.labels)
    table = {}
    for b in range(masks_lib.NUM_BINS):
        for label in LABELS:
            sel = (test_masks.bins == b) & (labels == label)
            table[cell_name(b, label)] = _cell(per_mask, sel)
    table["all"] = _cell(per_mask, np.ones(len(test_masks), bool))
    return table


def _cell(per_mask: dict[str, np.ndarray], selected: np.ndarray) -> dict:
    count = int(selected.sum())
    cell = {"count": count}
    for name in METRICS:
        cell[name] = float(per_mask[name][selected].mean()) if count else math.nan
    return cell


def format_table(table: dict[str, dict], title: str = "") -> str:
    """A Markdown table shaped like the paper's Table 1 (rows metrics, columns bin x N/B)."""
    columns = list(table)
    lines = [f"**{title}**", ""] if title else []
    lines.append("| | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    formats = {"l1": "{:.2f}", "psnr": "{:.2f}", "ssim": "{:.3f}"}
    for name in METRICS:
        row = [formats[name].format(table[c][name]) for c in columns]
        lines.append(f"| {METRIC_TITLES[name]} | " + " | ".join(row) + " |")
    lines.append("| masks | " + " | ".join(str(table[c]["count"]) for c in columns) + " |")
    return "\n".join(lines)


def results_name(method: str) -> str:
    """'results' for the network, 'results_telea' / 'results_ns' for the baselines."""
    return "results" if method == "model" else f"results_{method}"


def write_results(results: dict, workdir: str, name: str = "results") -> None:
    """<name>.json (everything, NaN as null) and <name>.md (the table) in the workdir."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"{name}.json"), "w") as f:
        json.dump(_nan_to_none(results), f, indent=1)
    with open(os.path.join(workdir, f"{name}.md"), "w") as f:
        f.write(format_table(results["table"], results["title"]) + "\n")


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value

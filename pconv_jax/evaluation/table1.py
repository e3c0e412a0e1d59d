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
import time
import warnings
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
METHODS = ("model",) + baselines.CLASSICAL_METHODS  # what `run` and the commands accept

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


def run(config: ml_collections.ConfigDict, workdir: str, *, method: str | None = None,
        checkpoint_step: int | None = None, progress: bool = True) -> dict:
    """Evaluates `method` on the configured held-out pairs; writes results.json/.md to workdir.

    `method`: 'model' (restores the latest checkpoint, or `checkpoint_step`), 'telea' or 'ns';
    defaults to config.eval.method. Returns the results dictionary written to results.json
    (results_telea.json / results_ns.json for the baselines, so they never overwrite the network's).
    """
    from pconv_jax.data import pipeline  # heavy (TensorFlow): import only when evaluating

    method = method or config.eval.method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if checkpoint_step is None and config.eval.checkpoint_step >= 0:
        checkpoint_step = config.eval.checkpoint_step
    step = None
    if method == "model":
        from pconv_jax.inference.inpaint import ModelInpainter
        from pconv_jax.training import checkpoints
        model, step = checkpoints.restore_model(config, workdir, step=checkpoint_step)
        inpaint = ModelInpainter(model, warn=False)  # one summary warning below
    else:
        inpaint = classical_inpainter(method, config.eval.inpaint_radius)
    check_writable(workdir)  # before the evaluation, not after it

    images = np.asarray(pipeline.load_eval_images(config), np.float32)
    test_masks = prepare_test_masks(config, workdir, images.shape[1:3])
    start = time.time()
    per_mask = evaluate(inpaint, images, test_masks, batch_size=config.eval.batch_size,
                        psnr_cap=config.eval.psnr_cap, progress=progress)
    table = summarize(per_mask, test_masks)
    unreached = getattr(inpaint, "unreached_share", 0.0)
    if unreached:
        warnings.warn(f"{unreached:.2%} of the hole pixels lay beyond the network's reach and "
                      f"were filled from downscaled copies", stacklevel=2)
    name = method if method != "model" else config.get("experiment", "model")
    title = (f"{name}" + (f" (step {step})" if step is not None else "")
             + f": {len(test_masks)} masks on {len(images)} held-out images, "
             f"{images.shape[1]}x{images.shape[2]}")
    results = dict(
        method=method, step=step, title=title, table=table,
        num_masks=len(test_masks), num_images=len(images),
        resolution=list(images.shape[1:3]),
        test_masks=os.path.dirname(test_masks.records[0].path),
        left_out=[dataclasses.asdict(f) for f in test_masks.left_out],
        unreached_hole_share=unreached,
        pairing="mask file j with held-out image j mod num_images",
        seconds=round(time.time() - start, 2),
        per_mask={name: per_mask[name].tolist() for name in per_mask},
    )
    print(format_table(table, title))  # first: a failed write still leaves the table on screen
    write_results(results, workdir, results_name(method))
    return results


def check_writable(workdir: str) -> None:
    """Creates `workdir` if needed; a clear OSError if files cannot be written there."""
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"cannot write the results into the workdir {workdir!r} ({e.strerror}); "
                      f"pass a writable --workdir") from e


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

"""Evaluating methods with the paper's Table 1 protocol: what `eval.py` runs.

A method is a name of the registry (`methods.REGISTRY`: 'model' is the workdir's network,
restored from its checkpoint, unreached holes filled as `ModelInpainter` does; 'patchmatch',
'telea', 'ns') or the path of another training workdir (its network). One method writes
results[_<method>].json/.md; a comparison of several, on identical pairs, writes
comparison.json/.md with a row per method. With `eval.fill_at_training_size`, a network fills
images larger than its training side as `inpaint.py` and the app do (`fill.fill_photo`).

The protocol itself, which takes any `Inpainter`, is `pconv_jax.evaluation.table1`; this module
sits on the inference floor because it builds the methods (restoring networks needs
`training.checkpoints`, which imports `evaluation`).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Sequence

import ml_collections
import numpy as np

from pconv_jax.data import heldout, nvidia_masks
from pconv_jax.evaluation import table1
from pconv_jax.evaluation.learned_metrics import LearnedMetrics
from pconv_jax.inference import fill, methods
from pconv_jax.training import workdir as workdir_lib


def run(config: ml_collections.ConfigDict, workdir: str, *, method: str | None = None,
        compare: Sequence[str] | None = None, metric_names: str | Sequence[str] | None = None,
        checkpoint_step: int | None = None, progress: bool = True) -> dict:
    """Evaluates one method, or compares several, on the configured held-out pairs.

    Args:
      method: 'model' (the workdir's latest checkpoint, or `checkpoint_step`), 'patchmatch',
        'telea' or 'ns'; default config.eval.method. Writes results.json/.md (the network) or
        results_<method>.json/.md into the workdir.
      compare: methods as above, or paths of other training workdirs (their networks), to
        evaluate on identical pairs; writes comparison.json/.md (a row per method).
      metric_names: 'l1,psnr,ssim,lpips,fid,is' or a subset; default config.eval.metrics.

    Returns the results dictionary written to the .json file.
    """
    names = table1.parse_metrics(metric_names or config.eval.metrics)
    entries = list(compare) if compare else [method or config.eval.method]
    _check_entries(entries)
    if checkpoint_step is None and config.eval.checkpoint_step >= 0:
        checkpoint_step = config.eval.checkpoint_step
    # Weights, checkpoints and the workdir are checked before the evaluation, not after it.
    learned = LearnedMetrics.from_config(config, names)
    built = [_build(config, workdir, entry, checkpoint_step) for entry in entries]
    labels = [method.label for method in built]
    for entry, method in zip(entries, built):  # two workdirs of one name: rows name their paths
        if labels.count(method.label) > 1:
            method.label = f"{entry}: {method.label}"
    workdir_lib.prepare_workdir(workdir, writing="the results into")

    images = np.asarray(heldout.load_eval_images(
        config.data, config.eval.num_images, heldout.eval_image_size(config)), np.float32)
    test_masks = table1.prepare_test_masks(config, workdir, images.shape[1:3])
    reference = table1.reference_features(images, learned, config.eval.batch_size)
    rows = [_evaluate(config, entry, method, images, test_masks, names, learned, reference,
                      progress) for entry, method in zip(entries, built)]

    setting = (f"{len(test_masks)} masks on {len(images)} held-out images, "
               f"{images.shape[1]}x{images.shape[2]}")
    common = dict(
        metrics=list(names), num_masks=len(test_masks), num_images=len(images),
        resolution=list(images.shape[1:3]),
        test_masks=os.path.dirname(test_masks.records[0].path),
        left_out=[dataclasses.asdict(f) for f in test_masks.left_out],
        pairing="mask file j with held-out image j mod num_images",
    )
    if compare:
        title = f"{len(rows)} methods: {setting}"
        markdown = table1.format_comparison({row["label"]: row["table"] for row in rows}, title)
        results = dict(title=title, markdown=markdown, methods=rows, **common)
        name = "comparison"
    else:
        title = f"{rows[0]['label']}: {setting}"
        markdown = table1.format_table(rows[0]["table"], title)
        results = dict(title=title, markdown=markdown, **rows[0], **common)
        name = table1.results_name(rows[0]["method"])
    # The table first: a failed write still leaves it on screen.
    print(markdown)
    written = table1.write_results(results, workdir, name)
    print(f"\nwrote {' and '.join(written)}")
    return results


def _check_entries(entries: Sequence[str]) -> None:
    for entry in entries:
        if entry not in methods.REGISTRY and not os.path.isdir(entry):
            raise ValueError(f"unknown method {entry!r}: choose from "
                             f"{', '.join(methods.REGISTRY)}, or give the path of a training "
                             f"workdir")
    repeated = sorted({e for e in entries if entries.count(e) > 1})
    if repeated:
        raise ValueError(f"method(s) {repeated} named twice")


def _build(config: ml_collections.ConfigDict, workdir: str, entry: str,
           checkpoint_step: int | None) -> methods.Method:
    """The method of an entry: a registry name, or another training workdir's network (its own
    config and latest checkpoint). Networks warn about unreached holes once, in `_evaluate`."""
    if entry not in methods.REGISTRY:
        return methods.build("model", workdir=entry, warn=False)
    if methods.REGISTRY[entry].from_workdir:
        return methods.build(entry, config=config, workdir=workdir, checkpoint=checkpoint_step,
                             network_name=config.get("experiment", "model"), warn=False)
    return methods.build(entry, config=config)


def _evaluate(config: ml_collections.ConfigDict, entry: str, method: methods.Method,
              images: np.ndarray,
              test_masks: nvidia_masks.TestMaskSet, names: Sequence[str],
              learned: LearnedMetrics, reference: dict[str, np.ndarray],
              progress: bool) -> dict:
    """One method's row: its table, per-mask values and timing."""
    start = time.time()
    inpaint = method.inpaint
    if config.eval.get("fill_at_training_size", False) and method.training_size:
        inpaint = fill.sized_inpainter(method)  # crops around the holes at the training side
    per_mask = table1.evaluate(inpaint, images, test_masks,
                               batch_size=config.eval.batch_size, psnr_cap=config.eval.psnr_cap,
                               metric_names=names, learned=learned, progress=progress)
    table = table1.summarize(per_mask, test_masks, names, learned, reference)
    unreached = getattr(method.inpaint, "unreached_share", 0.0)
    if unreached:
        warnings.warn(f"{method.label}: {unreached:.2%} of the hole pixels lay beyond the "
                      f"network's reach and were filled from downscaled copies", stacklevel=3)
    return dict(
        method=entry, label=method.label, step=method.step, table=table,
        unreached_hole_share=unreached, seconds=round(time.time() - start, 2),
        per_mask={k: v.tolist() for k, v in per_mask.items() if v.ndim == 1},
    )

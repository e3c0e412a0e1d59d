"""Evaluating a method with the paper's Table 1 protocol: what `eval.py` runs.

The method is the workdir's network (restored from its checkpoint, unreached holes filled as
`ModelInpainter` does) or one of OpenCV's classical methods; the protocol itself, which takes any
inpainter callable, is `pconv_jax.evaluation.table1`.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import ml_collections
import numpy as np

from pconv_jax.data import pipeline
from pconv_jax.evaluation import table1
from pconv_jax.inference.inpaint import ModelInpainter
from pconv_jax.training import checkpoints
from pconv_jax.training import workdir as workdir_lib


def run(config: ml_collections.ConfigDict, workdir: str, *, method: str | None = None,
        checkpoint_step: int | None = None, progress: bool = True) -> dict:
    """Evaluates `method` on the configured held-out pairs; writes results.json/.md to workdir.

    `method`: 'model' (restores the latest checkpoint, or `checkpoint_step`), 'telea' or 'ns';
    defaults to config.eval.method. Returns the results dictionary written to results.json
    (results_telea.json / results_ns.json for the baselines, so they never overwrite the network's).
    """
    method = method or config.eval.method
    if method not in table1.METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {table1.METHODS}")
    if checkpoint_step is None and config.eval.checkpoint_step >= 0:
        checkpoint_step = config.eval.checkpoint_step
    step = None
    if method == "model":
        model, step = checkpoints.restore_model(config, workdir, step=checkpoint_step)
        inpaint = ModelInpainter(model, warn=False)  # one summary warning below
    else:
        inpaint = table1.classical_inpainter(method, config.eval.inpaint_radius)
    # Before the evaluation, not after it.
    workdir_lib.prepare_workdir(workdir, writing="the results into")

    images = np.asarray(pipeline.load_eval_images(config), np.float32)
    test_masks = table1.prepare_test_masks(config, workdir, images.shape[1:3])
    start = time.time()
    per_mask = table1.evaluate(inpaint, images, test_masks, batch_size=config.eval.batch_size,
                               psnr_cap=config.eval.psnr_cap, progress=progress)
    table = table1.summarize(per_mask, test_masks)
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
    # The table first: a failed write still leaves it on screen.
    print(table1.format_table(table, title))
    table1.write_results(results, workdir, table1.results_name(method))
    return results

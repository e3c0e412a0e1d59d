"""The compiled data-parallel steps communicate only what data parallelism needs.

The train step is compiled for the 8 simulated devices (batch sharded, parameters replicated,
VGG terms on) and its optimized HLO is read: the only collectives allowed are all-reduces
(gradients, BatchNorm statistics, scalar metrics), and their bytes per step stay within
1.1 x (parameter bytes + BatchNorm statistics bytes). No activation may move between devices.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
import pytest

from pconv_jax import config as config_lib
from pconv_jax.network.vgg16 import random_vgg16
from pconv_jax.testing import collectives
from pconv_jax.training import mesh as mesh_lib
from pconv_jax.training.step import create_train_state, make_eval_step, make_train_step

GLOBAL_BATCH, SIZE = 16, 64
MOVES_ACTIVATIONS = ("all-gather", "all-to-all", "reduce-scatter", "collective-permute",
                     "collective-broadcast", "ragged-all-to-all")


def small_config() -> ml_collections.ConfigDict:
    config = config_lib.default_config()
    config.model.update(depth=5, base_width=8, max_width=32)  # the paper's loss weights: VGG on
    return config


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def compiled_steps():
    """(train HLO, eval HLO with a sharded batch, eval HLO with a replicated batch, params
    bytes, BatchNorm statistics bytes)."""
    config = small_config()
    mesh = mesh_lib.make_data_mesh()
    tx = optax.adam(1e-3)
    graphdef, state = create_train_state(config, tx, mesh)
    vgg = mesh_lib.replicate(random_vgg16(jax.random.key(0)), mesh)
    rng = np.random.default_rng(0)
    local = {"image": rng.random((GLOBAL_BATCH, SIZE, SIZE, 3), np.float32),
             "mask": (rng.random((GLOBAL_BATCH, SIZE, SIZE, 1)) > 0.3).astype(np.float32)}
    sharded, replicated = mesh_lib.global_batch(local, mesh), mesh_lib.replicate(local, mesh)
    train_step = make_train_step(graphdef, tx, dict(config.loss.weights), False)
    eval_step = make_eval_step(graphdef)
    with jax.set_mesh(mesh):
        train = train_step.lower(state, sharded, vgg).compile().as_text()
        eval_sharded = eval_step.lower(state, sharded).compile().as_text()
        eval_replicated = eval_step.lower(state, replicated).compile().as_text()
    return (train, eval_sharded, eval_replicated, tree_bytes(state.params),
            tree_bytes(state.batch_stats))


def describe(found: list[collectives.Collective]) -> str:
    return "; ".join(f"{c.op} {' '.join(c.shapes)}" for c in found[:8])


@pytest.mark.slow
@pytest.mark.multidevice
def test_train_step_all_reduces_only_gradients_and_statistics(compiled_steps):
    assert jax.device_count() == 8
    train, _, _, param_bytes, stats_bytes = compiled_steps
    found = collectives.collectives(train)
    moving = [c for c in found if c.op in MOVES_ACTIVATIONS]
    assert not moving, f"{len(moving)} collectives move activations between devices: " + describe(
        moving)
    reduced = sum(c.bytes for c in found if c.op == "all-reduce")
    # At least the gradients: a step that all-reduced nothing would not be data parallel.
    assert param_bytes <= reduced <= 1.1 * (param_bytes + stats_bytes), (
        f"{reduced} bytes all-reduced per step; parameters {param_bytes}, "
        f"BatchNorm statistics {stats_bytes}")


@pytest.mark.multidevice
def test_eval_step_communicates_only_its_metrics(compiled_steps):
    _, eval_sharded, eval_replicated, _, _ = compiled_steps
    # The held-out batch is replicated in training: every device computes it all, no collective.
    assert collectives.collectives(eval_replicated) == []
    # Sharded, only the two scalar metrics (means over the batch) are all-reduced.
    found = collectives.collectives(eval_sharded)
    assert all(c.op == "all-reduce" for c in found), describe(found)
    assert sum(c.bytes for c in found) <= 2 * 4


def test_collective_bytes_from_hlo_text():
    hlo = "\n".join([
        "  %all-reduce.1 = (f32[3,3,64,32]{3,2,1,0}, bf16[32]{0}) all-reduce(%a, %b), "
        "channel_id=1, to_apply=%add",
        "  %ars = f32[10]{0} all-reduce-start(f32[10]{0} %c), to_apply=%add",
        "  %ard = f32[10]{0} all-reduce-done(f32[10]{0} %ars)",
        "  %collective-permute = f32[2,8,8,256]{3,2,1,0} collective-permute(%d), "
        "source_target_pairs={{0,1}}",
        "  ROOT %t = (f32[], s32[]) tuple(%e, %f)",
    ])
    found = collectives.collectives(hlo)
    assert [c.op for c in found] == ["all-reduce", "all-reduce", "collective-permute"]
    assert [c.bytes for c in found] == [3 * 3 * 64 * 32 * 4 + 32 * 2, 40, 2 * 8 * 8 * 256 * 4]
    assert collectives.summary(hlo)["all-reduce"] == {"count": 2, "bytes": found[0].bytes + 40}
    with pytest.raises(ValueError, match="unknown HLO element type"):
        collectives.shape_bytes("q7[3]")

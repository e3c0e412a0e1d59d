"""The network as a pure function of plain pytrees: for `jit`, `grad`, `vmap`, `jvp`, ensembles.

    apply, params, state = functional.split(model)
    output, new_state = apply(params, state, image, mask, train=True)

`params` (the `nnx.Param`s) and `state` (everything else: the BatchNorm statistics) are nested
dicts of arrays with string keys (`{"encoder": {"0": {"conv": {"kernel": ...}}}}`), so any JAX
transform, optax, Orbax's `StandardSave` and `.npz` files take them as they are. `apply` returns
the network's raw output and the state after the call: in train mode the BatchNorm statistics
updated by the batch, in eval mode the state unchanged. `merge(apply, params, state)` gives an
NNX model back; `split(merge(...))` reproduces the same arrays exactly.

`flatten`/`unflatten` turn a tree into `{"a/b/c": array}` and back; `save_npz`/`load_npz`
write and read both trees in one `.npz` (keys `params/...` and `state/...`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from pconv_jax import files

Tree = dict[str, Any]  # nested dicts of arrays, string keys
Path = tuple[Any, ...]  # an NNX path: strings, and integers for nnx.List items


def _to_tree(state: nnx.State) -> Tree:
    """An NNX state as nested dicts with string keys (nnx.List indices become '0', '1', ...)."""
    tree: Tree = {}
    for path, value in nnx.to_flat_state(state):
        node = tree
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = value.get_value() if isinstance(value, nnx.Variable) else value
    return tree


def _lookup(tree: Mapping[str, Any], path: Path, what: str) -> Any:
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or str(key) not in node:
            where = "/".join(map(str, path[:i + 1]))
            raise ValueError(f"{what} has no entry {where!r}: it does not come from this network "
                             f"(split the model it was trained with)")
        node = node[str(key)]
    return node


def _from_tree(tree: Mapping[str, Any], paths: tuple[Path, ...], shapes, what: str) -> dict:
    """Nested dicts with NNX's own keys (integers for list items), as `nnx.merge` sorts them."""
    expected = {"/".join(map(str, path)) for path in paths}
    extra = sorted(set(flatten(tree)) - expected)
    if extra:
        raise ValueError(f"{what} has entries this network lacks: {extra[:5]} (split the model "
                         f"it was trained with)")
    nested: dict = {}
    for path, shape in zip(paths, shapes):
        value = _lookup(tree, path, what)
        if np.shape(value) != shape:
            raise ValueError(f"{what} entry {'/'.join(map(str, path))!r} has shape "
                             f"{np.shape(value)}; this network's is {shape}")
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return nested


@dataclasses.dataclass(frozen=True)
class Apply:
    """`apply(params, state, image, mask, *, train=False) -> (output, new_state)`.

    The network's structure (no arrays): hashable, so it may be closed over or passed as a
    static argument. Each call builds a fresh copy of the model from the trees, so it works
    inside any transform (no `TraceContextError` from mutating BatchNorm statistics of
    another trace level).
    """
    graphdef: nnx.GraphDef
    param_paths: tuple[Path, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    state_paths: tuple[Path, ...]
    state_shapes: tuple[tuple[int, ...], ...]

    def __call__(self, params: Tree, state: Tree, image: jax.Array, mask: jax.Array, *,
                 train: bool = False) -> tuple[jax.Array, Tree]:
        model = merge(self, params, state)
        model.train() if train else model.eval()
        output = model(image, mask)
        return output, _to_tree(nnx.state(model, nnx.Not(nnx.Param)))


def split(model: nnx.Module) -> tuple[Apply, Tree, Tree]:
    """(apply, params, state) of an NNX model (the model itself is left as it is)."""
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    flat_params, flat_state = nnx.to_flat_state(params), nnx.to_flat_state(state)
    apply = Apply(graphdef,
                  tuple(path for path, _ in flat_params),
                  tuple(tuple(np.shape(v.get_value())) for _, v in flat_params),
                  tuple(path for path, _ in flat_state),
                  tuple(tuple(np.shape(v.get_value())) for _, v in flat_state))
    return apply, _to_tree(params), _to_tree(state)


def merge(apply: Apply, params: Tree, state: Tree) -> nnx.Module:
    """The NNX model of `apply`'s structure holding `params` and `state` (copies of the
    variables, so the trees may be traced values). A tree of another network is refused,
    naming the first entry that does not fit."""
    return nnx.merge(apply.graphdef,
                     _from_tree(params, apply.param_paths, apply.param_shapes, "params"),
                     _from_tree(state, apply.state_paths, apply.state_shapes, "state"),
                     copy=True)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a/b/c": leaf} of nested dicts."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> Tree:
    """Nested dicts of {"a/b/c": leaf}."""
    tree: Tree = {}
    for name, value in flat.items():
        *parents, last = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return tree


def save_npz(path: str | os.PathLike, params: Tree, state: Tree) -> None:
    """Writes both trees to one `.npz` (keys `params/...`, `state/...`), atomically."""
    arrays = {name: np.asarray(value)
              for name, value in flatten({"params": params, "state": state}).items()}
    with files.atomic_output(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> tuple[Tree, Tree]:
    """(params, state) of a file `save_npz` wrote. Arrays only: nothing in the file runs."""
    with np.load(path, allow_pickle=False) as data:
        tree = unflatten({name: data[name] for name in data.files})
    if "params" not in tree or set(tree) - {"params", "state"}:
        raise ValueError(f"{os.fspath(path)!r} holds {sorted(tree)} at its top level, not "
                         f"'params' and 'state': it was not written by functional.save_npz")
    return tree["params"], tree.get("state", {})

"""Config files: the `:arg` syntax, loading a file plus overrides, and up-front validation.

Every setting and its default lives in `configs/default.py`; the experiment configs
(`configs/places2.py`, ...) start from it and override what differs. A config file's
`get_config(arg)` takes a comma-separated list of tokens, in any order:

- a stage: `train` (default) or `finetune`;
- `conv`: the paper's baseline, the same network with ordinary convolutions;
- for files with several resolutions (`celeba_hq.py`), the image size: `256` or `512`.

E.g. `--config configs/celeba_hq.py:512,finetune,conv`. An unknown token is an error.

This module imports no TensorFlow, JAX or model code: building a config is cheap.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import re
import types
from collections.abc import Sequence

import ml_collections

STAGES = ("train", "finetune")


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    """The parsed `:arg` of a config file."""
    stage: str = "train"
    conv: bool = False
    size: int | None = None


def parse_config_arg(arg: str | None, *, sizes: tuple[int, ...] = ()) -> ConfigArg:
    """Parses 'token,token,...' (stage, 'conv', and one of `sizes`); raises on unknown tokens."""
    stage, conv, size = "train", False, None
    for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        if token in STAGES:
            stage = token
        elif token == "conv":
            conv = True
        elif token.isdigit() and int(token) in sizes:
            size = int(token)
        else:
            valid = list(STAGES) + ["conv"] + [str(s) for s in sizes]
            raise ValueError(f"unknown config argument {token!r} in {arg!r}; use a comma-separated "
                             f"list of: {', '.join(valid)}")
    return ConfigArg(stage, conv, size)


# The file that lists every setting with its default; the experiment configs start from it.
DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                                   "default.py")


def default_config() -> ml_collections.ConfigDict:
    """An unlocked copy of `configs/default.py`'s config: every setting at its default."""
    return ml_collections.ConfigDict(load_config(DEFAULT_CONFIG_FILE).to_dict())


def default_workdir(experiment: str, stage: str) -> str:
    """`workdirs/<experiment>_<stage>` relative to the current directory."""
    return os.path.join("workdirs", f"{experiment}_{stage}")


# ----------------------------------------------------------------------------- loading

def load_module(path: str) -> types.ModuleType:
    """Executes a config file (a Python file with `get_config`) as a fresh module."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config file `name`.py next to `config_file` (how variants load `default.py`)."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py"))


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The locked config of 'path/to/file.py[:arg]' (its `get_config(arg)`) or a `config.json`.

    `overrides` are 'key=value' strings, e.g. 'train.num_steps=10', as on the command line
    (`--config.train.num_steps=10`): values are Python or JSON literals (else strings), keys must
    exist.
    """
    path, _, arg = spec.partition(":")
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    else:
        module = load_module(path)
        config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Sets 'a.b=value' overrides on a config; a key the config lacks is a KeyError."""
    for override in overrides:
        key, _, text = override.partition("=")
        *parents, leaf = key.split(".")
        section = config
        for name in parents:
            if not isinstance(section, ml_collections.ConfigDict) or name not in section:
                raise KeyError(unknown_key_message(KeyError(name), [override]))
            section = section[name]
        if not isinstance(section, ml_collections.ConfigDict) or leaf not in section:
            raise KeyError(unknown_key_message(KeyError(leaf), [override]))
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False}.get(text.lower(), text)
        section[leaf] = value


def unknown_key_message(err: BaseException, overrides: Sequence[str]) -> str:
    """The message for an override naming a key the config lacks (`err`: ConfigDict's error)."""
    text = str(err.args[0] if err.args else err)
    key = re.search(r"[A-Za-z_][A-Za-z0-9_]*", text)
    key = key.group(0) if key else text
    named = [o.partition("=")[0] for o in overrides if key in o.partition("=")[0].split(".")]
    where = f" in {', '.join(named)}" if named else ""
    suggestion = re.search(r'Did you mean "([^"\\]+)"', text)
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return (f"unknown config key {key!r}{where}{hint}; every key and its default is listed in "
            f"configs/default.py")


# ----------------------------------------------------------------------------- validation

def _positive_int(config: ml_collections.ConfigDict, key: str, minimum: int = 1) -> int:
    section, _, name = key.rpartition(".")
    value = config[section][name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Checks the settings a run depends on, before anything is created or compiled.

    Batch size > 0 and a multiple of `device_count` (the batch is global), step intervals > 0,
    at least one checkpoint kept, image sizes multiples of 2**model.depth.
    """
    batch = _positive_int(config, "data.batch_size")
    if device_count and batch % device_count:
        example = device_count * max(1, batch // device_count)
        raise ValueError(f"config.data.batch_size = {batch} (global) must be a multiple of the "
                         f"device count {device_count}, e.g. {example}")
    for key in ("train.num_steps", "train.log_every_steps", "train.eval_every_steps",
                "train.checkpoint_every_steps", "train.keep_checkpoints",
                "train.eval_batch_size", "eval.num_images", "eval.batch_size"):
        _positive_int(config, key, 0 if key == "train.num_steps" else 1)
    depth = _positive_int(config, "model.depth")
    multiple = 2**depth
    for key in ("data.image_size", "eval.image_size"):
        size = _positive_int(config, key, 0 if key == "eval.image_size" else 1)
        if size % multiple:
            example = max(multiple, size // multiple * multiple)
            raise ValueError(f"config.{key} = {size} must be a multiple of 2**model.depth = "
                             f"{multiple} (depth {depth}); e.g. {example}")

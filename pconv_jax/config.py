"""Config files: the `:arg` syntax, loading a file plus overrides, and up-front validation.

Every setting and its default lives in `pconv_jax/configs/default.py`; the experiment configs
(`configs/places2.py`, ...) start from it and override what differs. A config file's
`get_config(arg)` takes a comma-separated list of tokens, in any order:

- a stage: `train` (default) or `finetune`;
- `conv`: the paper's baseline, the same network with ordinary convolutions;
- for files with several resolutions (`celeba_hq.py`), the image size: `256` or `512`;
- a file's own options, e.g. `cpu` of `folder.py` (a network and schedule for a laptop CPU).

E.g. `--config configs/celeba_hq.py:512,finetune,conv`. An unknown token is an error.

One loader: ml_collections' config_flags reads `--config FILE[:arg]` and `--config.KEY=VALUE`
for the commands (`define_config_flag`, `parse_flags`), and `load_config(spec, overrides)` hands
it the same arguments in Python; the errors become one line each (`parse_flags`).

This module imports no TensorFlow, JAX or model code: building a config is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import re
import types
from collections.abc import Collection, Iterator, Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from pconv_jax.data import sources as data_sources

STAGES = ("train", "finetune")


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    """The parsed `:arg` of a config file."""
    stage: str = "train"
    conv: bool = False
    size: int | None = None
    options: frozenset[str] = frozenset()  # the file's own tokens given, e.g. {'cpu'}


def parse_config_arg(arg: str | None, *, sizes: tuple[int, ...] = (),
                     options: tuple[str, ...] = ()) -> ConfigArg:
    """Parses 'token,token,...' (stage, 'conv', one of `sizes`, any of the file's `options`);
    raises on unknown tokens."""
    stage, conv, size, chosen = "train", False, None, set()
    for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        if token in STAGES:
            stage = token
        elif token == "conv":
            conv = True
        elif token.isdigit() and int(token) in sizes:
            size = int(token)
        elif token in options:
            chosen.add(token)
        else:
            valid = list(STAGES) + ["conv"] + [str(s) for s in sizes] + list(options)
            raise ValueError(f"unknown config argument {token!r} in {arg!r}; use a comma-separated "
                             f"list of: {', '.join(valid)}")
    return ConfigArg(stage, conv, size, frozenset(chosen))


# The file that lists every setting with its default; the experiment configs start from it.
DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                                   "default.py")
CONFIG_FLAG = "config"  # the commands' config flag: --config FILE[:arg] --config.KEY=VALUE


def default_config() -> ml_collections.ConfigDict:
    """An unlocked copy of `pconv_jax/configs/default.py`'s config: every setting at its default."""
    from pconv_jax.configs import default  # it imports this module
    return ml_collections.ConfigDict(default.get_config().to_dict())


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


def define_config_flag(help_string: str, flag_values: flags.FlagValues = flags.FLAGS,
                       sys_argv: Sequence[str] | None = None) -> flags.FlagHolder:
    """The commands' `--config path.py[:arg]` flag with its `--config.KEY=VALUE` overrides
    (ml_collections' config_flags; the config comes locked)."""
    return config_flags.DEFINE_config_file(CONFIG_FLAG, None, help_string,
                                           flag_values=flag_values, lock_config=True,
                                           sys_argv=sys_argv)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The locked config of 'path/to/file.py[:arg]' (its `get_config(arg)`) or a `config.json`.

    `overrides` are 'key=value' strings, e.g. 'train.num_steps=10': the command line's
    `--config=spec --config.train.num_steps=10`, parsed the same way (`parse_flags`): each value
    is read as its key's type, keys must exist. A `config.json` is read by `read_config_json`
    (validated, errors name the file).
    """
    argv = ["load_config", *(f"--{CONFIG_FLAG}.{o}" for o in overrides)]
    flag_values = flags.FlagValues()
    path = spec.partition(":")[0]
    if path.endswith(".json"):
        with _one_line_errors(argv):  # a config given as a value is overridden right away
            config_flags.DEFINE_config_dict(CONFIG_FLAG, read_config_json(path),
                                            flag_values=flag_values, sys_argv=argv)
    else:
        argv.insert(1, f"--{CONFIG_FLAG}={spec}")
        define_config_flag("", flag_values, sys_argv=argv)
    parse_flags(flag_values, argv)
    return flag_values[CONFIG_FLAG].value


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """absl's parsing of `argv` (config files and their overrides included), the rest returned.

    A config file is loaded now, so that a missing or broken file fails here. Mistakes raise
    one line: KeyError for an unknown override key (naming the nearest key), OSError for a
    config file that is missing or fails to load, ValueError for a bad `:arg` or value.
    """
    with _one_line_errors(argv):
        rest = flag_values(argv)
    for name in flag_values:
        flag = flag_values[name]
        if not config_flags.config_flags.is_config_flag(flag) or flag.value is None:
            continue
        try:
            flag.value.keys()  # config_flags defers a load error to the first access
        except OSError as err:
            path = config_flags.get_config_filename(flag)
            reason = ("does not exist" if not os.path.isfile(path) else
                      f"cannot be loaded: {_one_line(err.__cause__ or err)}")
            raise OSError(f"--{name}: config file {path!r} {reason}") from err
    return rest


@contextlib.contextmanager
def _one_line_errors(argv: Sequence[str]) -> Iterator[None]:
    """config_flags' errors while it reads `argv`, as one line (see `parse_flags`)."""
    try:
        yield
    except (KeyError, AttributeError) as err:  # config_flags: an override the config lacks
        message = unknown_key_message(argv)
        if message is None:
            raise
        raise KeyError(message) from err
    except flags.IllegalFlagValueError as err:  # a bad value, or the config file's own error
        innermost = err
        while innermost.__context__ is not None:
            innermost = innermost.__context__
        where = str(err).split(": ", 1)[0]  # 'flag --config=...'
        raise ValueError(f"{where}: {_one_line(innermost)}") from err


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def unknown_key_message(argv: Sequence[str]) -> str | None:
    """The message for the first `--config.KEY` override in `argv` whose key the settings of
    `pconv_jax/configs/default.py` lack, with the nearest key; None if every key exists."""
    for arg in argv:
        match = re.match(rf"--?(?:no)?{CONFIG_FLAG}\.([^=]+)", arg)
        if not match:
            continue
        key, section = match.group(1), default_config()
        for name in key.split("."):
            is_section = isinstance(section, ml_collections.ConfigDict)
            if not is_section or name not in section:
                nearest = difflib.get_close_matches(name, section.keys() if is_section else [], n=1)
                hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
                return (f"unknown config key {name!r} in {key}{hint}; every key and its default "
                        f"is listed in pconv_jax/configs/default.py")
            section = section[name]
    return None


def read_config_json(path: str) -> ml_collections.ConfigDict:
    """A saved config (a workdir's `config.json`, as training writes it) over the defaults.

    It is data, never code. It must hold a JSON object with a `model` section; settings it lacks
    take their defaults (a workdir written before they existed), settings the defaults lack are
    ignored with a warning; then `validate`. Every error names the file and the key.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except ValueError as err:  # invalid JSON or text
        raise ValueError(f"{path} is not a valid config.json ({err}); repair it, or pass the "
                         f"config file the model was trained with") from None
    if not isinstance(saved, dict) or "model" not in saved:
        what = ("no 'model' section" if isinstance(saved, dict)
                else f"{json.dumps(saved)[:40]} instead of an object of config sections")
        raise ValueError(f"{path} holds {what}; repair it, or pass the config file the model "
                         f"was trained with")
    merged, ignored = default_config().to_dict(), []
    try:
        _merge(merged, saved, "", ignored)
        config = ml_collections.ConfigDict(merged)
        validate(config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if ignored:
        logging.warning("%s: settings this version does not have, ignored: %s", path,
                        ", ".join(ignored))
    return config


def _merge(defaults: dict, saved: dict, prefix: str, ignored: list[str]) -> None:
    """Writes `saved`'s settings into `defaults` (nested dicts); unknown keys go to `ignored`."""
    for name, value in saved.items():
        key = prefix + name
        if name not in defaults:
            ignored.append(key)
        elif isinstance(defaults[name], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config.{key} must be a section of settings, got {value!r}")
            _merge(defaults[name], value, key + ".", ignored)
        elif isinstance(value, dict):
            raise ValueError(f"config.{key} must be a single value, not a section")
        else:
            defaults[name] = value


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config training saved in `workdir` (its `config.json`), validated."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in workdir {workdir!r}: pass --config, the "
                                f"config file the model was trained with")
    return load_config(path)


# ----------------------------------------------------------------------------- validation

# The settings that name one of a few choices. The modules that read them hold the same lists
# (tests check that they agree); this module imports none of them (no JAX, no TensorFlow) but
# the data sources' registry, which imports nothing heavy.
CHOICES: dict[str, Collection[str]] = {
    "stage": STAGES,
    "model.dtype": ("float32", "bfloat16"),
    "model.input_norm": ("none", "imagenet", "symmetric"),
    "data.name": data_sources.SOURCES.keys(),  # a live view: a source registered later counts
    "data.resize_mode": ("crop", "resize"),
    "masks.source": ("generated", "nvidia"),
    "masks.border": ("any", "avoid", "touch"),
    "loss.dtype": ("float32", "bfloat16"),
    "train.lr_schedule": ("constant", "cosine", "step"),
}

# Integer settings and their least value.
MINIMUMS: dict[str, int] = {
    "seed": 0,
    "model.depth": 1, "model.base_width": 1, "model.max_width": 1,
    "data.image_size": 1, "data.batch_size": 1, "data.heldout_count": 0,
    "data.workers": -1, "data.worker_processes": -1, "data.prefetch": 1,
    "masks.nvidia_dilation_min": 1,
    "eval.image_size": 0, "eval.num_images": 1, "eval.masks_per_cell": 1, "eval.batch_size": 1,
    "eval.inpaint_radius": 1, "eval.patchmatch_patch_radius": 1, "eval.is_splits": 1,
    "eval.checkpoint_step": -1,
    "train.num_steps": 0, "train.log_every_steps": 1, "train.checkpoint_every_steps": 1,
    "train.keep_checkpoints": 1, "train.eval_every_steps": 1, "train.eval_batch_size": 1,
    "train.warmup_steps": 0, "train.lr_decay_steps": 0, "train.lr_step_every": 0,
    "train.accumulation_steps": 1,
}

# Float settings and their interval: (low, high, low included, high included).
INTERVALS: dict[str, tuple[float, float, bool, bool]] = {
    "model.hole_fill": (0.0, 1.0, True, True),
    "model.bn_momentum": (0.0, 1.0, True, False),
    "data.heldout_fraction": (0.0, 1.0, True, False),
    "masks.hole_ratio_min": (0.0, 1.0, True, False),
    "masks.hole_ratio_max": (0.0, 1.0, False, True),
    "eval.psnr_cap": (0.0, math.inf, False, False),
    "train.learning_rate": (0.0, math.inf, False, False),
    "train.adam_b1": (0.0, 1.0, True, False),
    "train.adam_b2": (0.0, 1.0, True, False),
    "train.lr_step_factor": (0.0, 1.0, False, True),
    "train.grad_clip_norm": (0.0, math.inf, True, False),
}


def _get(config: ml_collections.ConfigDict, key: str):
    value = config
    for name in key.split("."):
        value = value[name]
    return value


def flat_settings(config: ml_collections.ConfigDict) -> dict:
    """{'a.b': value} of every setting of a config."""
    return dict(_leaves(config))


def _leaves(tree, prefix: str = ""):
    """('a.b', value) of every setting of a config (or a dict)."""
    for name, value in tree.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _check_types(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict
                 ) -> None:
    """Every setting that `reference` (the defaults) has holds a value of its default's type (an
    int where a float is expected is fine)."""
    given = flat_settings(config)
    for key, default in _leaves(reference):
        if key not in given:
            continue
        value, want = given[key], type(default)
        ok = (type(value) is want or
              (want is float and isinstance(value, int) and not isinstance(value, bool)))
        if not ok:
            kind = {bool: "true or false", int: "an integer", float: "a number",
                    str: "a string"}.get(want, want.__name__)
            raise ValueError(f"config.{key} must be {kind}, got {value!r}")


def _positive_int(config: ml_collections.ConfigDict, key: str, minimum: int = 1) -> int:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _in_interval(config: ml_collections.ConfigDict, key: str) -> float:
    low, high, low_in, high_in = INTERVALS[key]
    value = _get(config, key)
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not (number and (low <= value if low_in else low < value)
            and (value <= high if high_in else value < high)):
        if high == math.inf:
            wanted = f"{'>=' if low_in else '>'} {low:g}"
        else:
            opening, closing = "[" if low_in else "(", "]" if high_in else ")"
            wanted = f"in {opening}{low:g}, {high:g}{closing}"
        raise ValueError(f"config.{key} must be a number {wanted}, got {value!r}")
    return value


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Checks every setting's type and range, before anything is created or compiled.

    Types as in `pconv_jax/configs/default.py`; choices (`CHOICES`), integer minimums
    (`MINIMUMS`) and intervals (`INTERVALS`); the batch size a multiple of `device_count` (the
    batch is global); image sizes multiples of 2**model.depth; the settings that go together
    (hole-ratio range, dilation range, a folder for `data.name='folder'`, NVIDIA masks' folder,
    loss weights).
    Files are not opened: a config stays valid on a machine without its data.
    """
    reference = default_config()
    _check_types(config, reference)
    for key, choices in CHOICES.items():
        if _get(config, key) not in choices:
            raise ValueError(f"config.{key} must be one of {', '.join(map(repr, choices))}, "
                             f"got {_get(config, key)!r}")
    for key, minimum in MINIMUMS.items():
        _positive_int(config, key, minimum)
    for key in INTERVALS:
        _in_interval(config, key)

    batch = config.data.batch_size
    if device_count and batch % device_count:
        example = device_count * max(1, batch // device_count)
        raise ValueError(f"config.data.batch_size = {batch} (global) must be a multiple of the "
                         f"device count {device_count}, e.g. {example}")
    parts = config.train.accumulation_steps
    if batch % (parts * (device_count or 1)):
        raise ValueError(f"config.data.batch_size = {batch} must be a multiple of "
                         f"config.train.accumulation_steps ({parts}) x the device count "
                         f"({device_count or 1}): each device's share splits into k micro-batches")
    check_schedule(config.train)
    depth = config.model.depth
    multiple = 2**depth
    for key in ("data.image_size", "eval.image_size"):
        size = _get(config, key)
        if size % multiple:
            example = max(multiple, size // multiple * multiple)
            raise ValueError(f"config.{key} = {size} must be a multiple of 2**model.depth = "
                             f"{multiple} (depth {depth}); e.g. {example}")

    masks = config.masks
    if masks.hole_ratio_min >= masks.hole_ratio_max:
        raise ValueError(f"config.masks.hole_ratio_min ({masks.hole_ratio_min}) must be below "
                         f"config.masks.hole_ratio_max ({masks.hole_ratio_max})")
    if masks.nvidia_dilation_min > masks.nvidia_dilation_max:
        raise ValueError(f"config.masks.nvidia_dilation_min ({masks.nvidia_dilation_min}) must "
                         f"not exceed config.masks.nvidia_dilation_max "
                         f"({masks.nvidia_dilation_max})")
    if masks.source == "nvidia" and not masks.nvidia_train_dir:
        raise ValueError("config.masks.source = 'nvidia' needs config.masks.nvidia_train_dir, "
                         "the folder of NVIDIA's irregular training masks")
    if config.data.name == "folder" and not config.data.folder:
        raise ValueError("config.data.name = 'folder' needs config.data.folder, the folder of "
                         "training images (e.g. --config.data.folder=/path/to/photos)")
    for term, weight in config.loss.weights.items():
        if term not in reference.loss.weights:
            raise ValueError(f"config.loss.weights has no term {term!r}; the terms are "
                             f"{', '.join(reference.loss.weights)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                0 <= weight < math.inf):
            raise ValueError(f"config.loss.weights.{term} must be a number >= 0, got {weight!r}")


def check_schedule(train: ml_collections.ConfigDict) -> None:
    """The learning-rate schedule's settings that go together (`validate`, and the schedule
    itself: `pconv_jax.training.step.learning_rate_schedule`)."""
    if train.lr_schedule == "cosine":
        end = train.lr_decay_steps or train.num_steps
        if end <= train.warmup_steps:
            raise ValueError(f"config.train.lr_schedule = 'cosine' decays until update {end} "
                             f"(lr_decay_steps, 0 = num_steps), which must exceed "
                             f"config.train.warmup_steps = {train.warmup_steps}")
    if train.lr_schedule == "step" and train.lr_step_every < 1:
        raise ValueError("config.train.lr_schedule = 'step' needs config.train.lr_step_every >= 1 "
                         "(updates between decays)")

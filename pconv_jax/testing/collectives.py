"""What a compiled step communicates: the collectives in its optimized HLO and their bytes.

Reads `jax.jit(f).lower(...).compile().as_text()`. Each collective instruction is counted
once, whether XLA wrote it synchronously (`all-reduce(...)`) or as an async pair
(`all-reduce-start` ... `all-reduce-done`, counted at its start); its bytes are those of its
result, which for an all-reduce equal those of its operands.
"""

from __future__ import annotations

import dataclasses
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter",
               "collective-permute", "collective-broadcast", "ragged-all-to-all")

# Bytes per element of the HLO primitive types (sub-byte types rounded up to one byte).
_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

# `%name = <result shape> <opcode>(` at the start of an instruction line.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
                          r"(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*(?:e\d+m\d+\w*)?)\[(?P<dims>[\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction: its opcode, result shapes (text) and bytes."""
    op: str
    shapes: tuple[str, ...]
    bytes: int


def shape_bytes(shape_text: str) -> tuple[tuple[str, ...], int]:
    """(array shapes, total bytes) of an HLO result shape, a tuple of arrays or one array.

    Async `-start` ops carry context scalars (e.g. u32[]) in their tuple; they are counted too
    (a few bytes)."""
    shapes, total = [], 0
    for match in _ARRAY.finditer(shape_text):
        dtype, dims = match["dtype"], match["dims"]
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown HLO element type {dtype!r} in {shape_text!r}")
        count = math.prod(int(d) for d in dims.split(",") if d)
        shapes.append(match[0])
        total += count * _DTYPE_BYTES[dtype]
    return tuple(shapes), total


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective instruction of an HLO module's text, in order of appearance."""
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            shapes, size = shape_bytes(match["shape"])
            found.append(Collective(match["op"], shapes, size))
    return found


def summary(hlo_text: str) -> dict[str, dict[str, int]]:
    """{opcode: {'count': n, 'bytes': b}} over the collectives of an HLO module's text."""
    result: dict[str, dict[str, int]] = {}
    for c in collectives(hlo_text):
        entry = result.setdefault(c.op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += c.bytes
    return result

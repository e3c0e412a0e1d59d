"""Every code block of README.md and docs/*.md runs.

A fenced block is run by its language: `python` blocks in one namespace per page (a snippet may
use what an earlier one on the page defined), `bash` blocks with bash (`set -euo pipefail`).
Other languages (`text`, ...) are not code. Everything runs in one scratch folder shared by all
pages (a user's checkout: the commands, `configs/` and `tests/fixtures/` are there, and
`workdirs/demo_train` once the Quick start has trained it).

An HTML comment on the line right before a block says how to treat it:

    <!-- skip: needs the Places2 download -->   not run; the test is reported as skipped,
                                                with the reason
    <!-- slow -->                               run only when slow tests run; every later
                                                block of the page is slow too (it may
                                                depend on this one)

A block's test runs the page's earlier blocks first (once per session), so that `-k` can pick
any one block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"python", "bash"}
FENCE = re.compile(r"^(`{3,})(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(skip|slow)\s*(?::\s*(.*?))?\s*-->\s*$")
# A block that uses the Quick start's network; the Quick start trains it first if no page has.
NEEDS_DEMO = re.compile(r"workdirs/demo_train|eval\.py +--config configs/demo\.py")
DEMO_TRAIN = "python train.py --config configs/demo.py"
# The checkout's files a user's commands use; linked into the scratch folder.
CHECKOUT = ("train.py", "eval.py", "inpaint.py", "app.py", "configs", "tests", "docs",
            "benchmarks", "pconv_jax")


@dataclasses.dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None  # the reason, when marked skip
    slow: bool

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page in a runnable language, with their markers."""
    blocks, lines, slow, i = [], page.read_text().splitlines(), False, 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, language = opening.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{page.name}:{i + 1}: unclosed code block"
        marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        skip = None
        if marker and marker.group(1) == "skip":
            skip = marker.group(2) or ""
            assert skip, f"{page.name}:{i + 1}: say why the block is skipped"
        slow = slow or bool(marker and marker.group(1) == "slow")
        if language in RUNNABLE:
            blocks.append(Block(page, i + 1, language, "\n".join(lines[i + 1:end]) + "\n",
                                skip, slow))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def test_the_pages_have_code_blocks_and_every_marker_is_used():
    """A marker that is not right before a code block is a mistake (it would mark nothing)."""
    assert len(BLOCKS) > 20
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if MARKER.match(line.strip()):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                assert FENCE.match(following), (
                    f"{page.name}:{i + 1}: a marker must be right before a code block")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor of a heading, as Python-Markdown's toc (MkDocs) and GitHub make it."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#").strip()) for line in page.read_text().splitlines()
            if re.match(r"#{1,6} ", line)}


def test_every_link_of_the_readme_leads_somewhere():
    """README is not part of the MkDocs site (whose strict build checks the docs' links)."""
    readme = REPO / "README.md"
    for target in LINK.findall(readme.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = (REPO / path) if path else readme
        assert page.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in anchors(page), f"README links to {target}: no such heading"


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """The folder every page's code runs in: a user's checkout, without its workdirs."""
    folder = tmp_path_factory.mktemp("docs")
    for name in CHECKOUT:
        os.symlink(REPO / name, folder / name)
    return folder


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: faster
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    return env


class PageRun:
    """Runs a page's blocks in order, each once; remembers which failed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.namespace: dict = {"__name__": "__docs__"}
        self.done: dict[int, str | None] = {}  # line -> None (passed) or the failure

    def run(self, block: Block) -> str | None:
        if NEEDS_DEMO.search(block.code) and not (self.folder / "workdirs" / "demo_train"
                                                  / "checkpoints").is_dir():
            subprocess.run(DEMO_TRAIN.split(), cwd=self.folder, env=environment(), check=True,
                           capture_output=True, timeout=900)
        if block.line not in self.done:
            self.done[block.line] = self._run(block)
        return self.done[block.line]

    def _run(self, block: Block) -> str | None:
        if block.language == "bash":
            result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.code],
                                    cwd=self.folder, env=environment(), capture_output=True,
                                    text=True, timeout=900)
            if result.returncode != 0:
                return (f"exit status {result.returncode}\n{result.stdout[-4000:]}\n"
                        f"{result.stderr[-4000:]}")
            return None
        out = io.StringIO()
        previous = os.getcwd()
        os.chdir(self.folder)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, block.name, "exec"), self.namespace)
        except Exception as err:  # noqa: BLE001 - reported as the block's failure
            return f"{type(err).__name__}: {err}\n{out.getvalue()[-2000:]}"
        finally:
            os.chdir(previous)
        return None


@pytest.fixture(scope="session")
def page_runs(scratch):
    runs: dict[Path, PageRun] = {}
    yield lambda page: runs.setdefault(page, PageRun(scratch))


@pytest.mark.parametrize("block", [
    pytest.param(b, id=b.name, marks=[pytest.mark.slow] if b.slow else [])
    for b in BLOCKS])
def test_code_block_runs(block, page_runs):
    if block.skip is not None:
        pytest.skip(f"{block.name}: {block.skip}")
    run = page_runs(block.page)
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.line < block.line and earlier.skip is None:
            failure = run.run(earlier)
            assert failure is None, f"an earlier block, {earlier.name}, failed: {failure}"
    failure = run.run(block)
    assert failure is None, f"{block.name} failed:\n{block.code}\n{failure}"

"""Shared test helpers (no tests here)."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

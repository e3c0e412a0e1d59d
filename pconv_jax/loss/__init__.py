"""The paper's loss."""

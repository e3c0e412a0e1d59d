"""Tools for the tests and benchmarks: the collectives of a compiled program, synthetic
prepared TFDS copies. No command or training run imports them."""

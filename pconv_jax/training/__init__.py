"""Training: the step, the loop, the device mesh, checkpoints, logs."""

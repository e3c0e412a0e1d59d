"""The paper's Table 1: metrics, protocol, classical baselines."""

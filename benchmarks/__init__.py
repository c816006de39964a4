"""Correctness-gated benchmarks of the mLSTM kernels and their peers (`python -m benchmarks.run`).

Run from the repository root; see benchmarks/README.md. Nothing here imports `mlstm_kernels` at
module import time, so the upstream worker can load upstream's package of the same name.
"""

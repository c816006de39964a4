"""Leaks.

* nanobind reports objects of its modules still alive at interpreter exit ("nanobind: leaked ...")
  on stderr: a child interpreter imports the package, calls every core kernel through torch (forward
  and backward) and through JAX, and exits; its stderr must not mention a leak.
* repeated calls do not grow memory: after a warm-up, 100 more forward + backward calls of every
  core kernel (each call's tensors ≥ 0.25 MB, so a per-call leak of any of them would add ≥ 25 MB)
  grow the child's resident set by less than 12 MB; on CUDA (gpu) torch.cuda.memory_allocated is
  unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import run_isolated

CALL_EVERY_KERNEL = r"""
import torch
import mlstm_kernels.torch as mt

def run_torch(device="cpu"):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)
    B, NH, S, DHQK, DHHV = 2, 4, 128, 64, 64
    x = dict(q=r(B, NH, S, DHQK), k=r(B, NH, S, DHQK), v=r(B, NH, S, DHHV), i=r(B, NH, S), f=r(B, NH, S) + 1)
    states = dict(c_initial=r(B, NH, DHQK, DHHV), n_initial=r(B, NH, DHQK), m_initial=r(B, NH, 1))
    for name, kw in (("chunkwise--limit_chunk", dict(chunk_size=64, return_last_states=True)),
                     ("chunkwise--xl_chunk", dict(chunk_size=128, return_last_states=True)),
                     ("parallel--tiled", {})):
        leaves = {k: v.clone().requires_grad_(True) for k, v in {**x, **(states if kw else {})}.items()}
        out = mt.get_mlstm_kernel(name)(**leaves, **kw)
        h = out[0] if kw else out
        (h.square().sum() + (out[1][0].sum() if kw else 0)).backward()
    with torch.no_grad():
        mt.get_mlstm_sequence_kernel("fused_sequence")(**x, **states, return_last_states=True)
        mt.get_mlstm_sequence_kernel("native_sequence__fused")(**{k: v[:, :, :8] for k, v in x.items()}, **states)
        mt.get_mlstm_step_kernel("fused")(x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0], x["i"][:, :, :1],
                                          x["f"][:, :, :1], states["c_initial"], states["n_initial"], states["m_initial"])
"""

EXIT_SCRIPT = CALL_EVERY_KERNEL + r"""
run_torch()
# Errors raised by the binding must not leak either.
from mlstm_kernels import _core
a = _core.FwdArgs()
try:
    _core.chunkwise_fwd(a)
except ValueError:
    pass
try:
    import jax, jax.numpy as jnp
    import mlstm_kernels.jax as mj
except ImportError:
    pass
else:
    xs = [jnp.ones((1, 2, 20, 8)), jnp.ones((1, 2, 20, 8)), jnp.ones((1, 2, 20, 4)), jnp.zeros((1, 2, 20)), jnp.ones((1, 2, 20))]
    for name in ("chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled"):
        fn = mj.get_mlstm_kernel(name)
        jax.grad(lambda q: fn(q, *xs[1:], chunk_size=16).sum())(xs[0]).block_until_ready()
    mj.get_mlstm_sequence_kernel("fused_sequence")(*xs).block_until_ready()
print("done")
"""


def test_no_nanobind_leaks_at_exit():
    proc = run_isolated(EXIT_SCRIPT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done" in proc.stdout
    assert "leaked" not in proc.stderr, proc.stderr[-3000:]


RSS_SCRIPT = CALL_EVERY_KERNEL + r"""
import gc, json, os
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
for _ in range(20):
    run_torch()
gc.collect()
before = rss()
for _ in range(100):
    run_torch()
gc.collect()
print(json.dumps({"before": before, "after": rss()}))
"""


def test_repeated_calls_do_not_grow_rss():
    proc = run_isolated(RSS_SCRIPT, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = sizes["after"] - sizes["before"]
    print(f"RSS {sizes['before'] / 2**20:.1f} MiB -> {sizes['after'] / 2**20:.1f} MiB")
    assert growth < 12 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 100 rounds of calls ({sizes})"


@pytest.mark.gpu
def test_repeated_calls_do_not_grow_cuda_memory():
    namespace: dict = {}
    exec(CALL_EVERY_KERNEL, namespace)
    for _ in range(5):
        namespace["run_torch"]("cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(50):
        namespace["run_torch"]("cuda")
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    # Freed cache blocks may make it smaller; it must not grow.
    assert after <= before, f"CUDA memory grew from {before} to {after} bytes over 50 rounds of calls"

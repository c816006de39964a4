"""Integration contracts of the torch operators: ``torch.library.opcheck`` (schema, fake/meta
functions, autograd registration, AOT dispatch), ``torch.compile(fullgraph=True)``, and CUDA-graph
capture on the caller's stream (GPU only)."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch

import mlstm_kernels.torch as mt
from mlstm_kernels.torch import _ops

from .utils import compare, derived_tolerance, make_inputs

B, NH, S, DHQK, DHHV = 2, 3, 37, 16, 8
LIMIT, XL = _ops.ALGORITHMS["limit_chunk"], _ops.ALGORITHMS["xl_chunk"]


def leaves(dtype=torch.float32, with_initial=True, requires_grad=True, S=S):
    x = make_inputs(B, NH, S, DHQK, DHHV, dtype, "cpu", with_initial=with_initial, f_bias=1.0, seed=1234)
    for key in "if":
        x[key] = x[key].float() if dtype != torch.float64 else x[key]
    return x.detached(requires_grad=requires_grad)


def chunkwise_args(with_initial, return_last_states, algorithm, dtype=torch.float32):
    x = leaves(dtype, with_initial)
    states = [x.get(n) for n in ("c_initial", "n_initial", "m_initial")]
    return (x["q"], x["k"], x["v"], x["i"], x["f"], *states, 1e-6, 16, algorithm, return_last_states, True)


def chunkwise_bwd_args(with_initial, with_dlast, algorithm):
    fwd_args = chunkwise_args(with_initial, True, algorithm)
    with torch.no_grad():
        h, c, n, m, saved = _ops.chunkwise_fwd(*fwd_args)
    detached = [None if t is None else t.detach() for t in fwd_args[:8]]
    dlast = (torch.randn_like(c), torch.randn_like(n), torch.randn_like(m)) if with_dlast else (None, None, None)
    return (*detached, h, saved, torch.randn_like(h), *dlast, 1e-6, 16, algorithm)


def parallel_args(requires_grad=True):
    x = leaves(with_initial=False, requires_grad=requires_grad)
    return (x["q"], x["k"], x["v"], x["i"], x["f"], 1e-6, True)


def parallel_bwd_args():
    args = parallel_args(requires_grad=False)
    h, saved = _ops.parallel_fwd(*args)
    return (*args[:5], h, saved, torch.randn_like(h), 1e-6)


def sequence_args(with_initial, return_last_states):
    x = leaves(with_initial=True, requires_grad=False)
    states = [x[n] if with_initial else None for n in ("c_initial", "n_initial", "m_initial")]
    return (x["q"], x["k"], x["v"], x["i"], x["f"], *states, 1e-6, return_last_states, torch.float32)


def step_args():
    x = leaves(with_initial=True, requires_grad=False, S=1)
    q, k, v = (x[n][:, :, 0] for n in "qkv")
    i, f = x["i"], x["f"]  # (B, NH, 1)
    return (q, k, v, i, f, x["c_initial"], x["n_initial"], x["m_initial"], 1e-6)


OPCHECK_CASES = {
    "chunkwise_fwd-limit-states": (_ops.chunkwise_fwd, lambda: chunkwise_args(True, True, LIMIT)),
    "chunkwise_fwd-xl-states": (_ops.chunkwise_fwd, lambda: chunkwise_args(True, True, XL)),
    "chunkwise_fwd-limit-initial_only": (_ops.chunkwise_fwd, lambda: chunkwise_args(True, False, LIMIT)),
    "chunkwise_fwd-xl-last_only": (_ops.chunkwise_fwd, lambda: chunkwise_args(False, True, XL)),
    "chunkwise_fwd-limit-stateless": (_ops.chunkwise_fwd, lambda: chunkwise_args(False, False, LIMIT)),
    "chunkwise_fwd-limit-fp64": (_ops.chunkwise_fwd, lambda: chunkwise_args(True, True, LIMIT, torch.float64)),
    "chunkwise_bwd-limit-dlast": (_ops.chunkwise_bwd, lambda: chunkwise_bwd_args(True, True, LIMIT)),
    "chunkwise_bwd-xl-no_dlast": (_ops.chunkwise_bwd, lambda: chunkwise_bwd_args(False, False, XL)),
    "parallel_fwd": (_ops.parallel_fwd, parallel_args),
    "parallel_bwd": (_ops.parallel_bwd, parallel_bwd_args),
    "sequence_fwd-states": (_ops.sequence_fwd, lambda: sequence_args(True, True)),
    "sequence_fwd-stateless": (_ops.sequence_fwd, lambda: sequence_args(False, False)),
    "step_fwd": (_ops.step_fwd, step_args),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    op, make_args = OPCHECK_CASES[case]
    torch.library.opcheck(op, make_args())


def test_fake_functions_match_real_outputs():
    """Under FakeTensorMode every operator returns outputs of the real shapes, dtypes and devices,
    including the saved buffer's byte size (the fake function asks the core, reading only shapes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for case, (op, make_args) in OPCHECK_CASES.items():
        args = make_args()
        real = op(*args)
        mode = FakeTensorMode()
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with mode:
            fake = op(*fake_args)
        for r, f in zip(real, fake):
            assert (tuple(f.shape), f.dtype, f.device.type) == (tuple(r.shape), r.dtype, r.device.type), case
            assert f.stride() == r.stride(), case


@functools.lru_cache(maxsize=None)
def _inductor_available() -> bool:
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return False
    try:
        torch.compile(lambda x: x + 1, fullgraph=True)(torch.ones(2))
    except Exception:
        return False
    return True


@pytest.mark.parametrize("name", ["chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled"])
def test_torch_compile_fullgraph(name):
    """The whole kernel (wrapper, op, autograd formula) compiles without graph breaks and gives the
    eager results, forward and backward."""
    if not _inductor_available():
        pytest.skip("torch.compile's inductor backend has no working C++ toolchain here")
    torch._dynamo.reset()
    fn = mt.get_mlstm_kernel(name)
    stateful = name.startswith("chunkwise")

    def loss(q, k, v, i, f, *states):
        if stateful:
            h, (c, n, m) = fn(q, k, v, i, f, *states, return_last_states=True, chunk_size=16)
            return (h * h).sum() + c.sum() + n.sum() + m.sum()
        return (fn(q, k, v, i, f) ** 2).sum()

    x = leaves(with_initial=stateful)
    args = list(x.values())
    eager = torch.autograd.grad(loss(*args), args)
    x2 = leaves(with_initial=stateful)
    args2 = list(x2.values())
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*args2), args2)
    for key, a, b in zip(x.keys(), compiled, eager):
        compare(
            f"{name} compiled d{key}", a, b, target=f"{name}(torch.compile)", baseline=f"{name}(eager)",
            shape_info=dict(S=S, B=B, NH=NH, DHQK=DHQK, DHHV=DHHV), dtype=torch.float32,
            tol_rel=derived_tolerance(0.0, torch.float32, grad=True),
        )


def test_torch_compile_step():
    if not _inductor_available():
        pytest.skip("torch.compile's inductor backend has no working C++ toolchain here")
    torch._dynamo.reset()
    step = mt.get_mlstm_step_kernel("fused")
    args = step_args()[:-1]
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True)(*args)
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=0)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["chunkwise--limit_chunk", "chunkwise--xl_chunk", "parallel--tiled"])
def test_cuda_graph_capture(name):
    """Forward and backward captured in a CUDA graph on a side stream and replayed with new inputs
    give the eager results: the ops run on the current stream and allocate through torch."""
    fn = mt.get_mlstm_kernel(name)
    stateful = name.startswith("chunkwise")
    x = make_inputs(B, NH, 64, 32, 32, torch.bfloat16, "cuda", with_initial=stateful, seed=7)
    static = {k: t.detach().clone().requires_grad_(True) for k, t in x.items()}

    def step():
        out = fn(**static, return_last_states=stateful, chunk_size=16) if stateful else fn(**static)
        h = out[0] if stateful else out
        return torch.autograd.grad(h.float().square().sum(), list(static.values()))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up on the capture stream, as torch recommends
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grads = step()

    fresh = make_inputs(B, NH, 64, 32, 32, torch.bfloat16, "cuda", with_initial=stateful, seed=8)
    with torch.no_grad():
        for key, t in fresh.items():
            static[key].copy_(t)
    graph.replay()
    torch.cuda.synchronize()
    eager_leaves = {k: t.detach().clone().requires_grad_(True) for k, t in fresh.items()}
    out = fn(**eager_leaves, return_last_states=stateful, chunk_size=16) if stateful else fn(**eager_leaves)
    h = out[0] if stateful else out
    eager = torch.autograd.grad(h.float().square().sum(), list(eager_leaves.values()))
    for a, b in zip(static_grads, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
def test_ops_run_on_the_current_stream():
    """A kernel launched on a side stream is ordered after work queued on that stream."""
    fn = mt.get_mlstm_kernel("chunkwise--limit_chunk")
    x = make_inputs(B, NH, 256, 64, 64, torch.float32, "cuda", seed=3)
    expected = fn(**x, chunk_size=64)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        q = torch.zeros_like(x["q"])
        torch.cuda._sleep(50_000_000)  # keep the side stream busy so a wrong stream would race
        q.copy_(x["q"])
        h = fn(**{**x, "q": q}, chunk_size=64)
    torch.cuda.synchronize()
    torch.testing.assert_close(h, expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_segmented_forward_without_grad(dtype):
    """Few (batch, head) pairs and a long sequence: the CUDA forward walks the sequence in segments
    side by side. Without autograd there is no saved buffer for the segment states; the results
    must be those of the same call with autograd, bit for bit."""
    fn = mt.get_mlstm_kernel("chunkwise--xl_chunk")
    x = make_inputs(1, 2, 2000, 32, 64, dtype, "cuda", with_initial=True, seed=11)
    with torch.no_grad():
        h0, s0 = fn(**x, return_last_states=True, chunk_size=64)
    leaves = {k: t.detach().clone().requires_grad_(True) for k, t in x.items()}
    h1, s1 = fn(**leaves, return_last_states=True, chunk_size=64)
    assert torch.equal(h0, h1.detach())
    for a, b in zip(s0, s1):
        assert torch.equal(a, b.detach())

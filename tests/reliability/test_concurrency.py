"""Concurrency and determinism through the Python layers (tests/cpp/test_cpu_forward.cpp covers
concurrent C ABI calls; tests/cpp/test_abi_errors.cpp the per-thread message from C).

* the same kernel from several Python threads at once (the binding releases the GIL) gives results
  bitwise identical to a single-threaded call, forward and gradients;
* repeated calls are bitwise identical, forward and gradients, for every core kernel;
* the error message of a failed call belongs to the thread that made it, while other threads fail
  with other messages or succeed at the same time;
* CUDA (gpu): the same kernel on several streams at once equals the default-stream result bitwise.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import mlstm_kernels.torch as mt

from ..torch.utils import make_inputs

B, NH, S, DHQK, DHHV = 2, 3, 70, 16, 24
CUDA_DHHV = 32  # the CUDA kernels take head dims in multiples of 16
THREADS = 6

TRAINING = {
    "chunkwise--limit_chunk": dict(chunk_size=16, return_last_states=True),
    "chunkwise--xl_chunk": dict(chunk_size=32, return_last_states=True),
    "parallel--tiled": dict(),
}


def _flatten(out):
    if isinstance(out, tuple):
        h, states = out
        return [h, *states]
    return [out]


def fwd_bwd(name, inputs):
    """Outputs and the gradients of a fixed loss on them, for one call of training kernel `name`."""
    leaves = inputs.detached(requires_grad=True)
    outs = _flatten(mt.get_mlstm_kernel(name)(**leaves, **TRAINING[name]))
    loss = sum((o.float() * (j + 1)).square().sum() for j, o in enumerate(outs))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [o.detach() for o in outs] + list(grads)


def inference(name, inputs):
    with torch.no_grad():
        if name == "step--fused":
            x = inputs
            c, n, m = (x[k] for k in ("c_initial", "n_initial", "m_initial"))
            h, states = mt.get_mlstm_step_kernel("fused")(x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0],
                                                          x["i"][:, :, :1], x["f"][:, :, :1], c, n, m)
            return [h, *states]
        return _flatten(mt.get_mlstm_sequence_kernel(name)(**inputs, return_last_states=True))


CASES = [(n, fwd_bwd) for n in TRAINING] + [("fused_sequence", inference), ("native_sequence__fused", inference),
                                            ("step--fused", inference)]


def _inputs(name, dtype, device="cpu", seed=17):
    stateful = not name.startswith("parallel")
    dhhv = CUDA_DHHV if device == "cuda" else DHHV
    return make_inputs(B, NH, S, DHQK, dhhv, dtype, device, with_initial=stateful, f_bias=1.0, seed=seed)


def _assert_bitwise(a, b, what):
    assert len(a) == len(b)
    for j, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"{what}: output/gradient {j} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name, fn", CASES, ids=[c[0] for c in CASES])
def test_repeated_calls_are_bitwise_identical(name, fn, dtype):
    inputs = _inputs(name, dtype)
    first = fn(name, inputs)
    for _ in range(3):
        _assert_bitwise(fn(name, inputs), first, f"{name} repeated")


@pytest.mark.parametrize("name, fn", CASES, ids=[c[0] for c in CASES])
def test_threads_give_bitwise_identical_results(name, fn):
    """THREADS Python threads run the kernel at once, each on its own inputs (seeds differ) and on
    shared inputs; every result equals the single-threaded one."""
    seeds = [100 + t for t in range(THREADS)]
    inputs = {s: _inputs(name, torch.float32, seed=s) for s in seeds}
    expected = {s: fn(name, inputs[s]) for s in seeds}
    shared = _inputs(name, torch.float32, seed=1)
    shared_expected = fn(name, shared)
    barrier = threading.Barrier(THREADS)

    def work(seed):
        barrier.wait()
        results = []
        for _ in range(3):
            results.append((seed, fn(name, inputs[seed])))
            results.append((None, fn(name, shared)))
        return results

    with ThreadPoolExecutor(THREADS) as pool:
        for results in pool.map(work, seeds):
            for seed, result in results:
                _assert_bitwise(result, shared_expected if seed is None else expected[seed], f"{name} in a thread")


def test_last_error_message_is_per_thread():
    """Threads fail at the same time with different chunk sizes (and others succeed in between):
    every exception names the chunk size its own thread passed."""
    fn = mt.get_mlstm_kernel("chunkwise--xl_chunk")
    from mlstm_kernels.torch import _ops

    inputs = _inputs("chunkwise--xl_chunk", torch.float32)
    bad_sizes = [17 + 2 * t for t in range(THREADS)]  # odd, so never a power of two; one per thread
    barrier = threading.Barrier(THREADS)

    def work(t):
        barrier.wait()
        messages = []
        for _ in range(20):
            # Straight to the operator, so the message comes from the core's per-thread last error.
            try:
                _ops.chunkwise_fwd(inputs["q"], inputs["k"], inputs["v"], inputs["i"], inputs["f"], None, None, None,
                                   1e-6, bad_sizes[t], 1, False, False)
            except ValueError as e:
                messages.append(str(e))
            fn(**inputs, chunk_size=64)  # a valid call clears this thread's message only
        return t, messages

    with ThreadPoolExecutor(THREADS) as pool:
        for t, messages in pool.map(work, range(THREADS)):
            assert len(messages) == 20
            for message in messages:
                assert message.endswith(f"got {bad_sizes[t]}"), f"thread {t} got another thread's message: {message!r}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TRAINING))
def test_cuda_streams_give_bitwise_identical_results(name):
    inputs = _inputs(name, torch.bfloat16, "cuda")
    expected = fwd_bwd(name, inputs)
    streams = [torch.cuda.Stream() for _ in range(4)]
    results = []
    torch.cuda.synchronize()
    for stream in streams:
        with torch.cuda.stream(stream):
            results.append(fwd_bwd(name, inputs))
    torch.cuda.synchronize()
    for result in results:
        _assert_bitwise(result, expected, f"{name} on a side stream")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TRAINING))
def test_cuda_threads_with_own_streams(name):
    inputs = _inputs(name, torch.bfloat16, "cuda")
    expected = fwd_bwd(name, inputs)
    torch.cuda.synchronize()

    def work(_):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            out = fwd_bwd(name, inputs)
        stream.synchronize()
        return out

    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(work, range(8)):
            _assert_bitwise(result, expected, f"{name} in a thread on its own stream")

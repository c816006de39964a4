"""64-bit indexing: element offsets beyond 2^31 while the computation stays small.

One 16-bit buffer of a little over 2^31 elements (≈ 4.3 GB, mostly never touched) holds q, k, v and
the output h of a batch of two: batch 0 at the start, batch 1 past element 2^31 (the batch stride is
> 2^31). Every core kernel must read and write there exactly as it does on the same values copied to
small contiguous tensors — bitwise, forward and backward. A kernel that forms offsets in 32 bits
would read or write batch 1 at a wrapped (negative or wrong) offset.

Skipped, with the reason, where the machine cannot back the buffer (MemAvailable in /proc/meminfo
on CPU; free device memory on CUDA).
"""

from __future__ import annotations

import pytest
import torch

import mlstm_kernels.torch as mt
from mlstm_kernels.torch import _ops

B, NH, S, DHQK, DHHV = 2, 2, 40, 16, 32
FAR = 2**31 + 4099  # element offset of batch 1: past 2^31 (and not a multiple of anything tidy)
REGION = NH * S * max(DHQK, DHHV)  # elements of one batch of one tensor
BUFFER = FAR + 4 * REGION  # q, k, v, h of batch 1 side by side after FAR
NEEDED_BYTES = BUFFER * 2 + (1 << 30)


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _views(buf: torch.Tensor):
    """q, k, v, h as (B, NH, S, D) views of `buf`; batch 1 starts past element 2^31."""
    views = {}
    for slot, (name, D) in enumerate((("q", DHQK), ("k", DHQK), ("v", DHHV), ("h", DHHV))):
        views[name] = buf.as_strided((B, NH, S, D), (FAR, S * D, D, 1), slot * REGION)
    assert views["q"][1].storage_offset() >= 2**31
    return views


@pytest.fixture
def far_views(request):
    device, dtype = request.param
    if device == "cpu":
        available = _mem_available()
        if available < NEEDED_BYTES:
            pytest.skip(f"needs ~{NEEDED_BYTES / 2**30:.1f} GiB of available memory, /proc/meminfo says "
                        f"{available / 2**30:.1f} GiB")
    else:
        free, _ = torch.cuda.mem_get_info()
        if free < NEEDED_BYTES:
            pytest.skip(f"needs ~{NEEDED_BYTES / 2**30:.1f} GiB of free device memory, {free / 2**30:.1f} GiB free")
    buf = torch.empty(BUFFER, dtype=dtype, device=device)  # never filled: only the views are touched
    views = _views(buf)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            views[name].copy_(torch.randn(views[name].shape, generator=gen))
        views["h"].fill_(float("nan"))
    gates = {"i": torch.randn(B, NH, S, generator=gen).to(device), "f": (torch.randn(B, NH, S, generator=gen) + 2).to(device)}
    yield views, gates
    del views, buf


PARAMS = [
    pytest.param(("cpu", torch.bfloat16), id="cpu-bfloat16"),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bfloat16", marks=pytest.mark.gpu),
    pytest.param(("cuda", torch.float16), id="cuda-float16", marks=pytest.mark.gpu),
]


def _small(t):
    return t.contiguous().clone()


@pytest.mark.parametrize("far_views", PARAMS, indirect=True)
def test_far_offsets_equal_small_copies(far_views, monkeypatch):
    views, gates = far_views
    q, k, v = views["q"], views["k"], views["v"]
    small = {"q": _small(q), "k": _small(k), "v": _small(v)}

    # Forward of every core form on the far views == on the small copies.
    cases = {
        "chunkwise--limit_chunk": lambda x: mt.get_mlstm_kernel("chunkwise--limit_chunk")(**x, **gates, chunk_size=16, return_last_states=True),
        "chunkwise--xl_chunk": lambda x: mt.get_mlstm_kernel("chunkwise--xl_chunk")(**x, **gates, chunk_size=32, return_last_states=True),
        "parallel--tiled": lambda x: (mt.get_mlstm_kernel("parallel--tiled")(**x, **gates), ()),
        "fused_sequence": lambda x: mt.get_mlstm_sequence_kernel("fused_sequence")(**x, **gates, return_last_states=True),
        "step--fused": lambda x: mt.get_mlstm_step_kernel("fused")(
            x["q"][:, :, 3], x["k"][:, :, 3], x["v"][:, :, 3], gates["i"][:, :, 3:4], gates["f"][:, :, 3:4],
            torch.zeros(B, NH, DHQK, DHHV, device=q.device), torch.zeros(B, NH, DHQK, device=q.device),
            torch.zeros(B, NH, 1, device=q.device)),
    }
    for name, fn in cases.items():
        far_h, far_states = fn({"q": q, "k": k, "v": v})
        small_h, small_states = fn(small)
        assert torch.equal(far_h, small_h), f"{name}: h from offsets past 2^31 differs"
        for a, b in zip(far_states, small_states):
            assert torch.equal(a, b), f"{name}: last states from offsets past 2^31 differ"

    # The core writes its output past 2^31 too: h allocated as the far view.
    allocate = _ops._output

    def far_output(like, shape, dtype=None):
        if tuple(shape) == (B, NH, S, DHHV) and (dtype or like.dtype) == q.dtype:
            return views["h"]
        return allocate(like, shape, dtype)

    expected = mt.get_mlstm_kernel("chunkwise--xl_chunk")(**small, **gates, chunk_size=32)
    monkeypatch.setattr(_ops, "_output", far_output)
    with torch.no_grad():
        mt.get_mlstm_kernel("chunkwise--xl_chunk")(q=q, k=k, v=v, **gates, chunk_size=32)
    monkeypatch.setattr(_ops, "_output", allocate)
    assert torch.equal(views["h"], expected), "h written past 2^31 differs"

    # Backward reads q, k, v, h and dh past 2^31 (dh is the far h view reused as an input).
    for algorithm, L in ((0, 16), (1, 32)):
        far_fwd = _ops.chunkwise_fwd(q, k, v, gates["i"], gates["f"], None, None, None, 1e-6, L, algorithm, False, True)
        small_fwd = _ops.chunkwise_fwd(small["q"], small["k"], small["v"], gates["i"], gates["f"], None, None, None,
                                       1e-6, L, algorithm, False, True)
        with torch.no_grad():
            views["h"].copy_(far_fwd[0])
        dh_small = _small(views["h"])
        far_grads = _ops.chunkwise_bwd(q, k, v, gates["i"], gates["f"], None, None, None, views["h"], far_fwd[4],
                                       views["h"], None, None, None, 1e-6, L, algorithm)
        small_grads = _ops.chunkwise_bwd(small["q"], small["k"], small["v"], gates["i"], gates["f"], None, None, None,
                                         small_fwd[0], small_fwd[4], dh_small, None, None, None, 1e-6, L, algorithm)
        for name, a, b in zip(("dq", "dk", "dv", "di", "df"), far_grads, small_grads):
            assert torch.equal(a, b), f"chunkwise algorithm {algorithm}: {name} from offsets past 2^31 differs"
    far_p = _ops.parallel_fwd(q, k, v, gates["i"], gates["f"], 1e-6, True)
    small_p = _ops.parallel_fwd(small["q"], small["k"], small["v"], gates["i"], gates["f"], 1e-6, True)
    dh = torch.randn(B, NH, S, DHHV, generator=torch.Generator().manual_seed(9)).to(q.device, q.dtype)
    with torch.no_grad():
        views["h"].copy_(dh)
    far_grads = _ops.parallel_bwd(q, k, v, gates["i"], gates["f"], far_p[0], far_p[1], views["h"], 1e-6)
    small_grads = _ops.parallel_bwd(small["q"], small["k"], small["v"], gates["i"], gates["f"], small_p[0], small_p[1], dh, 1e-6)
    for name, a, b in zip(("dq", "dk", "dv", "di", "df"), far_grads, small_grads):
        assert torch.equal(a, b), f"parallel: {name} from offsets past 2^31 differs"

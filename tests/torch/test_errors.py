"""Bad input gives a clear error that names the argument, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import mlstm_kernels.torch as mt

B, NH, S, DHQK, DHHV = 2, 3, 20, 8, 12
TRAINING = mt.get_available_mlstm_kernels()
CHUNKWISE = [n for n in TRAINING if n.startswith("chunkwise--")]
PARALLEL = [n for n in TRAINING if n.startswith("parallel--")]
CORE_CHUNKWISE = {"chunkwise--limit_chunk": "limit_chunk", "chunkwise--xl_chunk": "xl_chunk"}


def inputs(**override):
    x = {
        "q": torch.randn(B, NH, S, DHQK),
        "k": torch.randn(B, NH, S, DHQK),
        "v": torch.randn(B, NH, S, DHHV),
        "i": torch.randn(B, NH, S),
        "f": torch.randn(B, NH, S),
    }
    x.update(override)
    return x


def states(**override):
    x = {
        "c_initial": torch.zeros(B, NH, DHQK, DHHV),
        "n_initial": torch.zeros(B, NH, DHQK),
        "m_initial": torch.zeros(B, NH, 1),
    }
    x.update(override)
    return x


def step_inputs(**override):
    x = {
        "q": torch.randn(B, NH, DHQK),
        "k": torch.randn(B, NH, DHQK),
        "v": torch.randn(B, NH, DHHV),
        "i": torch.randn(B, NH, 1),
        "f": torch.randn(B, NH, 1),
        "c": torch.zeros(B, NH, DHQK, DHHV),
        "n": torch.zeros(B, NH, DHQK),
        "m": torch.zeros(B, NH, 1),
    }
    x.update(override)
    return x


BAD_SHAPES = [
    ("q", {"q": torch.randn(B, NH, DHQK)}, "q must have shape"),
    ("k", {"k": torch.randn(B, NH, S, DHQK + 1)}, "k must have shape"),
    ("k-S", {"k": torch.randn(B, NH, S + 1, DHQK)}, "k must have shape"),
    ("v", {"v": torch.randn(B + 1, NH, S, DHHV)}, "v must have shape"),
    ("v-rank", {"v": torch.randn(B, NH, S)}, "v must have shape"),
    ("i", {"i": torch.randn(B, NH, S, 1)}, "i must have shape"),
    ("f", {"f": torch.randn(B, NH, S - 1)}, "f must have shape"),
]


@pytest.mark.parametrize("kernel", TRAINING)
@pytest.mark.parametrize("case, override, message", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_bad_shapes_name_the_argument(kernel, case, override, message):
    with pytest.raises(ValueError, match=message) as info:
        mt.get_mlstm_kernel(kernel)(**inputs(**override))
    assert kernel in str(info.value)


@pytest.mark.parametrize("kernel", CHUNKWISE)
@pytest.mark.parametrize(
    "override, message",
    [
        ({"c_initial": torch.zeros(B, NH, DHQK, DHQK)}, "c_initial must have shape"),
        ({"n_initial": torch.zeros(B, NH, DHHV)}, "n_initial must have shape"),
        ({"m_initial": torch.zeros(B, NH, 2)}, "m_initial must have shape"),
        ({"c_initial": None}, "must be given together"),
        ({"n_initial": None, "m_initial": None}, "must be given together"),
    ],
)
def test_bad_states(kernel, override, message):
    with pytest.raises(ValueError, match=message):
        mt.get_mlstm_kernel(kernel)(**inputs(), **states(**override))


@pytest.mark.parametrize("kernel", TRAINING)
@pytest.mark.parametrize("name", ["q", "k", "v", "i", "f"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_dtypes_are_rejected(kernel, name, dtype):
    bad = inputs()[name].to(dtype)
    with pytest.raises(ValueError, match=f"{name} has dtype {dtype}"):
        mt.get_mlstm_kernel(kernel)(**inputs(**{name: bad}))


@pytest.mark.parametrize("kernel", TRAINING)
@pytest.mark.parametrize("name", ["k", "v", "f"])
def test_mixed_devices_are_rejected(kernel, name):
    # A meta tensor stands in for a second device: the check must fire before any computation.
    other = torch.empty(inputs()[name].shape, device="meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but q is on cpu"):
        mt.get_mlstm_kernel(kernel)(**inputs(**{name: other}))


@pytest.mark.parametrize("kernel", CHUNKWISE)
def test_mixed_devices_in_states(kernel):
    with pytest.raises(ValueError, match="n_initial is on meta"):
        mt.get_mlstm_kernel(kernel)(**inputs(), **states(n_initial=torch.empty(B, NH, DHQK, device="meta")))


@pytest.mark.parametrize("kernel", TRAINING)
def test_non_tensor_input(kernel):
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        mt.get_mlstm_kernel(kernel)(**inputs(v=[[1.0]]))


@pytest.mark.parametrize("kernel", TRAINING)
def test_qkv_dtypes_must_match_outside_autocast(kernel):
    with pytest.raises(ValueError, match="q, k and v must share one dtype"):
        mt.get_mlstm_kernel(kernel)(**inputs(k=torch.randn(B, NH, S, DHQK, dtype=torch.bfloat16)))


@pytest.mark.parametrize("kernel", list(CORE_CHUNKWISE))
@pytest.mark.parametrize("chunk_size", [0, 8, 24, 100, -16, 8192, True, 64.0])
def test_bad_chunk_sizes(kernel, chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        mt.get_mlstm_kernel(kernel)(**inputs(), chunk_size=chunk_size)


def test_chunk_size_limits_differ_by_algorithm():
    # 256 is beyond limit_chunk's one-level tiling but fine for xl_chunk (checked before running).
    with pytest.raises(ValueError, match=r"limit_chunk needs a power of two in \[16, 128\], got 256"):
        mt.get_mlstm_kernel("chunkwise--limit_chunk")(**inputs(), chunk_size=256)


@pytest.mark.parametrize("kernel", PARALLEL)
def test_parallel_rejects_states(kernel):
    fn = mt.get_mlstm_kernel(kernel)
    with pytest.raises(ValueError, match="parallel form has no state"):
        fn(**inputs(), **states())
    with pytest.raises(ValueError, match="parallel form has no state"):
        fn(**inputs(), return_last_states=True)


@pytest.mark.parametrize("kernel", mt.get_available_mlstm_step_kernels())
@pytest.mark.parametrize(
    "override, message",
    [
        ({"q": torch.randn(B, NH, 1, DHQK)}, "q must have shape"),
        ({"v": torch.randn(B, NH + 1, DHHV)}, "v must have shape"),
        ({"i": torch.randn(B, NH, 2)}, "i must have shape"),
        ({"c": torch.zeros(B, NH, DHQK, DHQK)}, "c must have shape"),
        ({"m": torch.zeros(B, NH, 1, 1)}, "m must have shape"),
        ({"n": None}, "needs the states c, n and m"),
        ({"f": torch.randn(B, NH, 1).long()}, "f has dtype"),
    ],
)
def test_step_errors(kernel, override, message):
    with pytest.raises(ValueError, match=message):
        mt.get_mlstm_step_kernel(kernel)(**step_inputs(**override))


@pytest.mark.parametrize("kernel", mt.get_available_mlstm_sequence_kernels())
@pytest.mark.parametrize(
    "override, message",
    [
        ({"k": torch.randn(B, NH, S, DHQK + 2)}, "k must have shape"),
        ({"i": torch.randn(B, NH)}, "i must have shape"),
        ({"v": torch.randn(B, NH, S, DHHV).int()}, "v has dtype"),
    ],
)
def test_sequence_errors(kernel, override, message):
    with pytest.raises(ValueError, match=message):
        mt.get_mlstm_sequence_kernel(kernel)(**inputs(**override))

"""Inputs and calls for each kind of kernel, written once for every provider.

Our kernels and upstream's share one interface (ours is a drop-in replacement), so the same
workload serves both; the attention and FLA peers get their own. Imports torch only (the upstream
worker uses this module in a process where `mlstm_kernels` is upstream's package).

Inputs are random, never zeros: q, k, v ~ N(0, 1); i ~ N(0, 1); f ~ N(3, 1) (a forget gate
biased towards remembering, as in trained xLSTMs); states (step, sequence) from a previous
random step, so m is a realistic stabiliser.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from .configs import Point
from .timing import Workload

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _generator(device: str, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(1234 + seed)
    return g


def mlstm_inputs(p: Point, dtype: torch.dtype, device: str, seed: int, grad: bool) -> dict[str, torch.Tensor]:
    g = _generator(device, seed)

    def randn(*shape, mean=0.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) + mean).to(dtype)

    t = {
        "q": randn(p.B, p.NH, p.S, p.DHQK),  # (B, NH, S, DHQK)
        "k": randn(p.B, p.NH, p.S, p.DHQK),  # (B, NH, S, DHQK)
        "v": randn(p.B, p.NH, p.S, p.DHHV),  # (B, NH, S, DHHV)
        "i": randn(p.B, p.NH, p.S),  # (B, NH, S)
        "f": randn(p.B, p.NH, p.S, mean=3.0),  # (B, NH, S)
    }
    if grad:
        for x in t.values():
            x.requires_grad_(True)
        t["dh"] = randn(p.B, p.NH, p.S, p.DHHV)  # (B, NH, S, DHHV)
    return t


def _backward(out: torch.Tensor, inputs: dict[str, torch.Tensor], names: tuple[str, ...]) -> None:
    # autograd.grad returns fresh gradients: no accumulation kernels into .grad between runs.
    torch.autograd.grad(out, [inputs[n] for n in names], inputs["dh"])


def training(fn: Callable, p: Point, dtype: torch.dtype, device: str, mode: str, kwargs: dict) -> Workload:
    """A chunkwise/parallel training kernel `fn(q, k, v, i, f, **kwargs) -> h`."""
    grad = mode == "fwbw"

    def call(t: dict[str, Any]) -> None:
        h = fn(t["q"], t["k"], t["v"], t["i"], t["f"], **kwargs)  # (B, NH, S, DHHV)
        if grad:
            _backward(h, t, ("q", "k", "v", "i", "f"))

    return Workload(lambda seed: mlstm_inputs(p, dtype, device, seed, grad), call)


def step_inputs(p: Point, dtype: torch.dtype, device: str, seed: int, dtype_state: torch.dtype) -> dict:
    g = _generator(device, seed)

    def randn(*shape, mean=0.0, to=dtype):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) + mean).to(to)

    return {
        "q": randn(p.B, p.NH, p.DHQK),  # (B, NH, DHQK)
        "k": randn(p.B, p.NH, p.DHQK),  # (B, NH, DHQK)
        "v": randn(p.B, p.NH, p.DHHV),  # (B, NH, DHHV)
        "i": randn(p.B, p.NH, 1),  # (B, NH, 1)
        "f": randn(p.B, p.NH, 1, mean=3.0),  # (B, NH, 1)
        "c": randn(p.B, p.NH, p.DHQK, p.DHHV, to=dtype_state),  # (B, NH, DHQK, DHHV)
        "n": randn(p.B, p.NH, p.DHQK, to=dtype_state),  # (B, NH, DHQK)
        "m": randn(p.B, p.NH, 1, to=dtype_state),  # (B, NH, 1)
    }


def step(fn: Callable, p: Point, dtype: torch.dtype, device: str, kwargs: dict) -> Workload:
    """A step kernel `fn(q, k, v, i, f, c, n, m, **kwargs) -> (h, (c, n, m))`."""
    dtype_state = kwargs.get("dtype_state", torch.float32)

    def call(t: dict[str, Any]) -> None:
        fn(t["q"], t["k"], t["v"], t["i"], t["f"], t["c"], t["n"], t["m"], **kwargs)

    return Workload(lambda seed: step_inputs(p, dtype, device, seed, dtype_state), call)


def step_state_bytes(p: Point, dtype_state: torch.dtype = torch.float32) -> int:
    """Bytes of (C, n, m) read plus written by one step: the memory-traffic floor of the step."""
    size = torch.empty((), dtype=dtype_state).element_size()
    return 2 * p.B * p.NH * (p.DHQK * p.DHHV + p.DHQK + 1) * size


def sequence(fn: Callable, p: Point, dtype: torch.dtype, device: str, kwargs: dict) -> Workload:
    """A sequence kernel `fn(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states=True)`
    (inference: initial states in, last states out)."""

    def make(seed: int) -> dict:
        t = mlstm_inputs(p, dtype, device, seed, grad=False)
        s = step_inputs(p, dtype, device, seed + 10_000, torch.float32)
        t.update(c=s["c"], n=s["n"], m=s["m"])
        return t

    def call(t: dict[str, Any]) -> None:
        fn(t["q"], t["k"], t["v"], t["i"], t["f"], c_initial=t["c"], n_initial=t["n"], m_initial=t["m"],
           return_last_states=True, **kwargs)

    return Workload(make, call)


def sdpa(p: Point, dtype: torch.dtype, device: str, mode: str, force_flash: bool) -> Workload:
    """torch scaled_dot_product_attention, causal, NH_ATTN heads of DH_ATTN at the same token count;
    `force_flash` pins the flash backend on CUDA, otherwise torch chooses."""
    grad = mode == "fwbw"

    def make(seed: int) -> dict:
        g = _generator(device, seed)
        shape = (p.B, p.NH_ATTN, p.S, p.DH_ATTN)  # (B, NH_ATTN, S, DH_ATTN)
        t = {n: torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype) for n in "qkv"}
        if grad:
            for x in t.values():
                x.requires_grad_(True)
            t["dh"] = torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)
        return t

    def attention(t: dict) -> torch.Tensor:
        if device == "cuda" and force_flash:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True)
        return F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True)

    def call(t: dict) -> None:
        out = attention(t)  # (B, NH_ATTN, S, DH_ATTN)
        if grad:
            _backward(out, t, ("q", "k", "v"))

    return Workload(make, call)


def fla(fn: Callable, gate: str, p: Point, dtype: torch.dtype, device: str, mode: str) -> Workload:
    """FLA's chunk_simple_gla (gate "head": one decay per head and step) or chunk_gla (gate "key":
    one per key dimension). FLA takes token-first tensors (B, S, NH, D); older versions default to
    head-first, so the layout is passed explicitly where the signature has it."""
    import inspect

    grad = mode == "fwbw"
    layout = {"head_first": False} if "head_first" in inspect.signature(fn).parameters else {}

    def make(seed: int) -> dict:
        g = _generator(device, seed)

        def randn(*shape):
            return torch.randn(*shape, generator=g, device=device, dtype=torch.float32)

        t = {
            "q": randn(p.B, p.S, p.NH, p.DHQK).to(dtype),  # (B, S, NH, DHQK)
            "k": randn(p.B, p.S, p.NH, p.DHQK).to(dtype),  # (B, S, NH, DHQK)
            "v": randn(p.B, p.S, p.NH, p.DHHV).to(dtype),  # (B, S, NH, DHHV)
        }
        gate_shape = (p.B, p.S, p.NH) if gate == "head" else (p.B, p.S, p.NH, p.DHQK)
        t["g"] = F.logsigmoid(randn(*gate_shape) + 3.0)  # log decay < 0, fp32
        if grad:
            for x in t.values():
                x.requires_grad_(True)
            t["dh"] = randn(p.B, p.S, p.NH, p.DHHV).to(dtype)  # (B, S, NH, DHHV)
        return t

    def call(t: dict) -> None:
        out, _ = fn(q=t["q"], k=t["k"], v=t["v"], g=t["g"], **layout)  # (B, S, NH, DHHV)
        if grad:
            _backward(out, t, ("q", "k", "v", "g"))

    return Workload(make, call)

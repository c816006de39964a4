"""The core kernels under JAX's transformations: jit, grad, vmap (folded into B), their compositions,
and state passing (a sequence cut in pieces == one call), all against plain, untransformed calls.

On the CPU the comparisons are in float64, where the transformed and the plain call run the very
same per-(b, h) computation: the tolerance is 1e-12 relative (rounding only). On CUDA (float32, head
dims a multiple of 16) a different batch size may change the work split, so the float32
rounding-noise floor applies.
"""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlstm_kernels.jax as mj

from . import utils
from .conftest import device_params

EPS = utils.f32(1e-6)
TRAINING = [("chunkwise--limit_chunk", 16), ("chunkwise--xl_chunk", 32), ("parallel--tiled", 64)]
B, NH, S = 2, 3, 37
V = 3  # size of the vmapped axis


class Setup:
    """Per device: head dims, dtype, tolerance and where the inputs live."""

    def __init__(self, device: str):
        self.device = device
        self.jax_device = utils.device_for(device)
        cpu = device == "cpu"
        self.DHQK, self.DHHV = (5, 7) if cpu else (16, 32)
        self.dtype = jnp.float64 if cpu else jnp.float32
        self.tol = 1e-12 if cpu else utils.FLOOR_REL["float32"]


@pytest.fixture(params=device_params())
def setup(request):
    return Setup(request.param)


def _trees_close(name, got, want, setup, **info):
    info = dict(info)
    target, baseline = info.pop("target", name), info.pop("baseline", "untransformed")
    for idx, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        utils.compare(f"{name} [{idx}]", g, w, target=target, baseline=baseline, dtype=setup.dtype, tol_rel=setup.tol,
                      shape_info=utils.shape_info(B, NH, S, setup.DHQK, setup.DHHV, device=setup.device, **info))


def _inputs(setup, with_initial, seed=None, batch=None):
    """Random inputs on the setup's device; with `batch`, every array gets a leading axis of that size."""
    DHQK, DHHV = setup.DHQK, setup.DHHV
    seed = secrets.randbits(31) if seed is None else seed
    shape = (batch,) if batch else ()
    rng = np.random.default_rng(seed)
    x = {
        "q": rng.standard_normal(shape + (B, NH, S, DHQK)),
        "k": rng.standard_normal(shape + (B, NH, S, DHQK)),
        "v": rng.standard_normal(shape + (B, NH, S, DHHV)),
        "i": rng.standard_normal(shape + (B, NH, S)) * 2,
        "f": rng.standard_normal(shape + (B, NH, S)) + 1,
    }
    if with_initial:
        x.update(c_initial=rng.standard_normal(shape + (B, NH, DHQK, DHHV)),
                 n_initial=rng.standard_normal(shape + (B, NH, DHQK)),
                 m_initial=rng.standard_normal(shape + (B, NH, 1)))
    return {k: jax.device_put(jnp.asarray(v, setup.dtype), setup.jax_device) for k, v in x.items()}


def _kernel(name, L):
    form = name.split("--")[0]
    fn = mj.get_mlstm_kernel(name)
    with_last = form == "chunkwise"
    return (lambda **x: fn(**x, return_last_states=with_last, chunk_size=L, eps=EPS)), form == "chunkwise"


def _loss(out):
    """A loss touching h and, when present, every last state (fixed weights from the values' shapes)."""
    leaves = jax.tree.leaves(out)
    return sum(jnp.sum(jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)) * x) for x in leaves)


@pytest.mark.parametrize("name,L", TRAINING, ids=[n for n, _ in TRAINING])
def test_jit_and_grad(name, L, setup):
    """jit(kernel) == kernel; jit(grad(loss)) == grad(loss) for every input, initial states included."""
    fn, stateful = _kernel(name, L)
    x = _inputs(setup, stateful)
    _trees_close(f"{name} jit", jax.jit(lambda x: fn(**x))(x), fn(**x), setup, target=name)
    grad = jax.grad(lambda x: _loss(fn(**x)))
    _trees_close(f"{name} jit(grad)", jax.jit(grad)(x), grad(x), setup, target=name)


@pytest.mark.parametrize("name,L", TRAINING, ids=[n for n, _ in TRAINING])
def test_vmap(name, L, setup):
    """vmap over all inputs, over q only, and over a non-leading axis equals a loop of plain calls."""
    fn, stateful = _kernel(name, L)
    xb = _inputs(setup, stateful, batch=V)
    loop = [fn(**{k: v[j] for k, v in xb.items()}) for j in range(V)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *loop)
    _trees_close(f"{name} vmap(all)", jax.vmap(lambda x: fn(**x))(xb), stacked, setup, target=name, V=V)

    shared = {k: v[0] for k, v in xb.items() if k != "q"}
    loop_q = jax.tree.map(lambda *a: jnp.stack(a), *[fn(q=xb["q"][j], **shared) for j in range(V)])
    _trees_close(f"{name} vmap(q only)", jax.vmap(lambda q: fn(q=q, **shared))(xb["q"]), loop_q, setup, target=name, V=V)

    v_axis2 = jnp.moveaxis(xb["v"], 0, 2)  # (B, NH, V, S, DHHV): the mapped axis is not leading
    loop_v = jax.tree.map(lambda *a: jnp.stack(a), *[fn(v=xb["v"][j], **{k: x[0] for k, x in xb.items() if k != "v"}) for j in range(V)])
    rest = {k: x[0] for k, x in xb.items() if k != "v"}
    _trees_close(f"{name} vmap(v, in_axes=2)", jax.vmap(lambda v: fn(v=v, **rest), in_axes=2)(v_axis2), loop_v, setup, target=name, V=V)


@pytest.mark.parametrize("name,L", TRAINING, ids=[n for n, _ in TRAINING])
def test_vmap_with_grad(name, L, setup):
    """vmap(grad), grad of a vmapped loss, nested vmap, and vmap over cotangents only (jacrev-style)."""
    fn, stateful = _kernel(name, L)
    xb = _inputs(setup, stateful, batch=V)
    grad = jax.grad(lambda x: _loss(fn(**x)))
    loop = jax.tree.map(lambda *a: jnp.stack(a), *[grad({k: v[j] for k, v in xb.items()}) for j in range(V)])
    _trees_close(f"{name} vmap(grad)", jax.jit(jax.vmap(grad))(xb), loop, setup, target=name, V=V)
    # grad of a loss summed over a vmapped axis == the per-slice gradients, stacked.
    _trees_close(f"{name} grad(sum of vmap)", jax.grad(lambda x: jnp.sum(jax.vmap(lambda y: _loss(fn(**y)))(x)))(xb),
                 jax.grad(lambda x: sum(_loss(fn(**{k: v[j] for k, v in x.items()})) for j in range(V)))(xb), setup, target=name, V=V)

    x2 = jax.tree.map(lambda a: a.reshape((1, V) + a.shape[1:]), xb)  # two vmapped axes (1, V)
    nested = jax.vmap(jax.vmap(lambda x: fn(**x)))(x2)
    _trees_close(f"{name} vmap(vmap)", jax.tree.map(lambda a: a[0], nested), jax.vmap(lambda x: fn(**x))(xb), setup, target=name, V=V)

    # Only the cotangents are batched: every backward reuses the one forward's saved buffer.
    x = {k: v[0] for k, v in xb.items()}
    out, vjp = jax.vjp(lambda x: fn(**x), x)
    rng = np.random.default_rng(0)
    cts = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal((V,) + o.shape), dtype=o.dtype), out)
    batched = jax.vmap(vjp)(cts)
    looped = jax.tree.map(lambda *a: jnp.stack(a), *[vjp(jax.tree.map(lambda c: c[j], cts)) for j in range(V)])
    _trees_close(f"{name} vmap(vjp) over cotangents", batched, looped, setup, target=name, V=V)


@pytest.mark.parametrize("name,L", TRAINING[:2], ids=[n for n, _ in TRAINING[:2]])
@pytest.mark.parametrize("cut", [1, 16, 30])
def test_state_passing_training(name, L, cut, setup):
    """Two calls chained through the last states == one call, forward and gradients."""
    fn = mj.get_mlstm_kernel(name)
    x = _inputs(setup, True)
    run = lambda x: fn(**x, return_last_states=True, chunk_size=L, eps=EPS)  # noqa: E731

    def pieces(x):
        first = {k: (v[:, :, :cut] if k not in utils.STATE_KEYS else v) for k, v in x.items()}
        h1, (c, n, m) = run(first)
        second = {k: v[:, :, cut:] for k, v in x.items() if k not in utils.STATE_KEYS}
        h2, last = run(dict(second, c_initial=c, n_initial=n, m_initial=m))
        return jnp.concatenate([h1, h2], axis=2), last

    _trees_close(f"{name} state passing (cut at {cut})", pieces(x), run(x), setup, target=name, baseline="one call")
    _trees_close(f"{name} state passing gradients (cut at {cut})", jax.grad(lambda x: _loss(pieces(x)))(x),
                 jax.grad(lambda x: _loss(run(x)))(x), setup, target=name, baseline="one call")


@pytest.mark.parametrize("name", ["native_sequence__native", "native_sequence__fused", "fused_sequence"])
def test_state_passing_sequence(name, setup):
    """Sequence kernels chained through their states == one call == fused steps one at a time."""
    fn = mj.get_mlstm_sequence_kernel(name)
    x = _inputs(setup, True)
    run = lambda x: fn(**x, return_last_states=True, eps=EPS, dtype_state=setup.dtype)  # noqa: E731
    whole = run(x)
    h1, (c, n, m) = run({k: (v[:, :, :20] if k not in utils.STATE_KEYS else v) for k, v in x.items()})
    h2, last = run(dict({k: v[:, :, 20:] for k, v in x.items() if k not in utils.STATE_KEYS}, c_initial=c, n_initial=n, m_initial=m))
    _trees_close(f"{name} state passing", (jnp.concatenate([h1, h2], axis=2), last), whole, setup, target=name, baseline="one call")

    step = jax.jit(mj.get_mlstm_step_kernel("fused"), static_argnames=("eps", "dtype_state"))
    c, n, m = x["c_initial"], x["n_initial"], x["m_initial"]
    hs = []
    for t in range(S):
        h_t, (c, n, m) = step(x["q"][:, :, t], x["k"][:, :, t], x["v"][:, :, t], x["i"][:, :, t], x["f"][:, :, t],
                              c, n, m, eps=EPS, dtype_state=setup.dtype)
        hs.append(h_t)
    _trees_close(f"{name} vs fused steps", (jnp.stack(hs, axis=2), (c, n, m)), whole, setup, target=name, baseline="fused steps")


def test_vmap_step_and_sequence(setup):
    """The forward-only kernels fold a vmapped axis into B as well."""
    xb = _inputs(setup, True, batch=V)
    for name in ("native_sequence__fused", "fused_sequence"):
        fn = mj.get_mlstm_sequence_kernel(name)
        run = lambda x: fn(**x, return_last_states=True, eps=EPS, dtype_state=setup.dtype)  # noqa: E731
        loop = jax.tree.map(lambda *a: jnp.stack(a), *[run({k: v[j] for k, v in xb.items()}) for j in range(V)])
        _trees_close(f"{name} vmap", jax.vmap(run)(xb), loop, setup, target=name, V=V)
    step = mj.get_mlstm_step_kernel("fused")
    args = lambda x: (x["q"][..., 0, :], x["k"][..., 0, :], x["v"][..., 0, :], x["i"][..., :1], x["f"][..., :1],  # noqa: E731
                      x["c_initial"], x["n_initial"], x["m_initial"])
    run = lambda x: step(*args(x), eps=EPS, dtype_state=setup.dtype)  # noqa: E731
    loop = jax.tree.map(lambda *a: jnp.stack(a), *[run({k: v[j] for k, v in xb.items()}) for j in range(V)])
    _trees_close("fused step vmap", jax.vmap(run)(xb), loop, setup, target="fused", V=V)


def test_step_updates_donated_state_in_place(setup):
    """With the states donated, the step writes the new states into the same buffers (no copy)."""
    x = _inputs(setup, True)
    step = mj.get_mlstm_step_kernel("fused")
    args = (x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0], x["i"][:, :, :1], x["f"][:, :, :1])
    want = step(*args, x["c_initial"], x["n_initial"], x["m_initial"], eps=EPS, dtype_state=setup.dtype)
    jitted = jax.jit(lambda *a: step(*a, eps=EPS, dtype_state=setup.dtype), donate_argnums=(5, 6, 7))
    c, n, m = (jnp.copy(x[k]) for k in utils.STATE_KEYS)
    c_ptr = c.unsafe_buffer_pointer()
    got = jitted(*args, c, n, m)
    assert c.is_deleted(), "the donated c was not consumed"
    assert got[1][0].unsafe_buffer_pointer() == c_ptr, "the new c does not live in the donated buffer"
    _trees_close("fused step in place", got, want, setup, target="fused", baseline="not donated")

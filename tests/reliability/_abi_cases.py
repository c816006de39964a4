"""Bad requests made straight to the C ABI through the nanobind ``_core`` module (no framework layer in
between), each with the message it must produce. Imported by test_bad_inputs_core.py and run by it
in a child interpreter (``python -c "...run_cases(ids)"``), so a crash fails one case instead of the
pytest process. Every case prints one JSON line: {"id", "outcome": "ok" | "error", "type", "message"}.

| case                          | expected                                                        |
|-------------------------------|-----------------------------------------------------------------|
| negative stride on a tensor   | ValueError "<name>: negative stride"                            |
| innermost stride 2 or 0       | ValueError "<name>: innermost stride must be 1"                 |
| dtype code 7 / -1             | ValueError "<name>: unknown dtype code"                         |
| data pointer 0 (required)     | ValueError "<name>: null data pointer"                          |
| malformed tensor tuple        | ValueError "tensor must be None or (data_ptr, dtype, strides)"  |
| five strides                  | ValueError "at most 4 strides"                                  |
| device kind 5                 | ValueError "device.kind: unknown device kind 5"                 |
| CUDA device, no GPU/backend   | RuntimeError "no CUDA backend" or ValueError "device.index"     |
| B, NH, S, DHQK, DHHV <= 0     | ValueError "<dim> must be >= 1"                                 |
| B·NH·(S+DHQK)·DH overflow     | ValueError "problem too large"                                  |
| chunk_size 0, 24, 256 (limit) | ValueError "chunk_size: limit_chunk needs a power of two in [16, 128]" |
| chunk_size 8192 (xl)          | ValueError "chunk_size: xl_chunk needs a power of two in [16, 4096]"   |
| algorithm 7                   | ValueError "algorithm: unknown chunkwise algorithm 7"           |
| DHQK 2^20 + 1 on CPU          | ValueError "DHQK must be a multiple of 1 and at most 1048576"   |
| step with S = 2               | ValueError "step: S must be 1"                                  |
| step without new states       | ValueError "c_last, n_last and m_last"                          |
| float16 chunkwise states      | ValueError "chunkwise states must be float32"                   |
| k float64, q float32          | ValueError "q, k, v and h must share one dtype"                 |
| two of three initial states   | ValueError "give all of them or none"                           |
| parallel with initial states  | ValueError "parallel form has no state"                         |
| eps NaN / -1                  | ValueError "eps must be finite and >= 0"                        |
| backward: dq stride 2, di dtype, NULL dh, states without their gradients | ValueError naming dq / di / dh / dc_initial |
| size queries of huge valid shapes (S = 2^31, DH = 2^20) | return (no overflow, no hang)         |
| every step case through ``step_fwd_direct`` (the torch step's path) | the same as through FwdArgs |

Strides that point outside the caller's buffers cannot be detected by any C ABI that takes raw
pointers; that is the caller's contract (the torch and JAX layers build them from real tensors).
"""

from __future__ import annotations

import json
import sys

import numpy as np

B, NH, S, DHQK, DHHV = 2, 3, 5, 4, 6

_KEEP: list = []  # buffers must outlive the call


def _tensor(shape, dtype=np.float32, fill=0.5):
    arr = np.full(shape, fill, dtype=dtype)
    _KEEP.append(arr)
    code = {np.dtype(np.float32): 0, np.dtype(np.float64): 3, np.dtype(np.float16): 1}[arr.dtype]
    return (arr.ctypes.data, code, tuple(s // arr.itemsize for s in arr.strides))


def fwd_args(form="chunkwise", *, states=False, last=False, dtype=np.float32, state_dtype=np.float32, chunk_size=16, algorithm=0):
    from mlstm_kernels import _core

    s = 1 if form == "step" else S
    a = _core.FwdArgs()
    a.device = (0, 0, 0)
    a.shape = (B, NH, s, DHQK, DHHV)
    a.eps = 1e-6
    a.chunk_size = chunk_size
    a.algorithm = algorithm
    a.q, a.k = _tensor((B, NH, s, DHQK), dtype), _tensor((B, NH, s, DHQK), dtype)
    a.v, a.h = _tensor((B, NH, s, DHHV), dtype), _tensor((B, NH, s, DHHV), dtype)
    a.i, a.f = _tensor((B, NH, s), dtype), _tensor((B, NH, s), dtype)
    if states or form == "step":
        a.c_initial = _tensor((B, NH, DHQK, DHHV), state_dtype)
        a.n_initial = _tensor((B, NH, DHQK), state_dtype)
        a.m_initial = _tensor((B, NH), state_dtype)
    if last or form == "step":
        a.c_last = _tensor((B, NH, DHQK, DHHV), state_dtype)
        a.n_last = _tensor((B, NH, DHQK), state_dtype)
        a.m_last = _tensor((B, NH), state_dtype)
    return a


def bwd_args(form="chunkwise", *, states=False):
    from mlstm_kernels import _core

    a = _core.BwdArgs()
    a.device = (0, 0, 0)
    a.shape = (B, NH, S, DHQK, DHHV)
    a.eps = 1e-6
    a.chunk_size = 16
    a.algorithm = 0
    for name, shape in (("q", (B, NH, S, DHQK)), ("k", (B, NH, S, DHQK)), ("v", (B, NH, S, DHHV)), ("h", (B, NH, S, DHHV)),
                        ("dh", (B, NH, S, DHHV)), ("dq", (B, NH, S, DHQK)), ("dk", (B, NH, S, DHQK)), ("dv", (B, NH, S, DHHV)),
                        ("i", (B, NH, S)), ("f", (B, NH, S)), ("di", (B, NH, S)), ("df", (B, NH, S))):
        setattr(a, name, _tensor(shape))
    if states:
        for prefix in ("", "d"):
            setattr(a, prefix + "c_initial", _tensor((B, NH, DHQK, DHHV)))
            setattr(a, prefix + "n_initial", _tensor((B, NH, DHQK)))
            setattr(a, prefix + "m_initial", _tensor((B, NH)))
    a.saved = 0
    return a


# Dimensions of each tensor at the ABI (the binding reports every descriptor with 4 strides).
NDIM = {"q": 4, "k": 4, "v": 4, "h": 4, "dq": 4, "dh": 4, "i": 3, "f": 3}


def _inner_stride(name, value):
    """A mutation of tensor `name` whose innermost stride becomes `value`."""
    n = NDIM[name]
    return _setattr(name, lambda d: _with(d, strides=d[2][: n - 1] + (value,)))


def _with(desc, *, data=None, dtype=None, strides=None):
    p, d, s = desc
    return (p if data is None else data, d if dtype is None else dtype, s if strides is None else strides)


STEP_TENSORS = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial", "h", "c_last", "n_last", "m_last")


def _fwd_call(form, mutate, direct=False, **kw):
    """direct: the step through _core.step_fwd_direct, which takes the FwdArgs fields as arguments."""

    def run():
        from mlstm_kernels import _core

        a = fwd_args(form, **kw)
        mutate(a)
        if direct:
            _core.step_fwd_direct(a.device, a.shape, a.eps, *(getattr(a, name) for name in STEP_TENSORS))
        else:
            getattr(_core, f"{form}_fwd")(a)

    run.request = (form, mutate, kw)
    return run


def _bwd_call(form, mutate, **kw):
    def run():
        from mlstm_kernels import _core

        a = bwd_args(form, **kw)
        mutate(a)
        getattr(_core, f"{form}_bwd")(a)

    return run


def _sizes_call(form, shape):
    def run():
        from mlstm_kernels import _core

        a = fwd_args(form)
        a.shape = shape
        ws, saved = getattr(_core, f"{form}_fwd_sizes")(a)
        if not (0 <= ws < 2**63 and 0 <= saved < 2**63):
            raise AssertionError(f"implausible sizes {ws}, {saved}")

    return run


def _setattr(name, value_fn):
    return lambda a: setattr(a, name, value_fn(getattr(a, name)))


FORMS = ("parallel", "chunkwise", "sequence", "step")
CUDA_MESSAGES = ("no CUDA backend", "device.index")

# id -> (callable, accepted exception type names, message needles: all must appear; for CUDA any of)
CASES: dict[str, tuple] = {}

for form in FORMS:
    for name in ("q", "v", "f", "h"):
        CASES[f"{form}-{name}-negative-stride"] = (
            _fwd_call(form, _setattr(name, lambda d: _with(d, strides=(-d[2][0],) + d[2][1:]))),
            ("ValueError",), (f"{name}: negative stride",))
    CASES[f"{form}-k-inner-stride-2"] = (
        _fwd_call(form, _inner_stride("k", 2)), ("ValueError",),
        ("k: innermost stride must be 1",))
    CASES[f"{form}-i-inner-stride-0"] = (
        _fwd_call(form, _inner_stride("i", 0)), ("ValueError",),
        ("i: innermost stride must be 1",))
    for code in (7, -1):
        CASES[f"{form}-v-dtype-{code}"] = (
            _fwd_call(form, _setattr("v", lambda d, code=code: _with(d, dtype=code))), ("ValueError",),
            (f"unknown dtype code {code}",))
    CASES[f"{form}-q-null"] = (_fwd_call(form, _setattr("q", lambda d: _with(d, data=0))), ("ValueError",),
                               ("null data pointer",))
    CASES[f"{form}-device-kind-5"] = (_fwd_call(form, lambda a: setattr(a, "device", (5, 0, 0))), ("ValueError",),
                                      ("device.kind: unknown device kind 5",))
    CASES[f"{form}-cuda-device"] = (_fwd_call(form, lambda a: setattr(a, "device", (1, 0, 0))),
                                    ("RuntimeError", "ValueError"), CUDA_MESSAGES)
    for index, dim in enumerate(("B", "NH", "S", "DHQK", "DHHV")):
        if form == "step" and dim == "S":
            continue
        for value in (0, -3):
            def shape_mutate(a, index=index, value=value):
                shape = list(a.shape)
                shape[index] = value
                a.shape = tuple(shape)
            CASES[f"{form}-{dim}={value}"] = (_fwd_call(form, shape_mutate), ("ValueError",), (f"{dim} must be >= 1",))
    CASES[f"{form}-shape-overflow"] = (
        _fwd_call(form, lambda a: setattr(a, "shape", (2**40, 2**40, a.shape[2], 1, 1))), ("ValueError",),
        ("problem too large",))
    CASES[f"{form}-DHQK-over-limit"] = (
        _fwd_call(form, lambda a: setattr(a, "shape", a.shape[:3] + ((1 << 20) + 1, DHHV))), ("ValueError",),
        ("DHQK must be a multiple of 1 and at most 1048576",))
    CASES[f"{form}-eps-nan"] = (_fwd_call(form, lambda a: setattr(a, "eps", float("nan"))), ("ValueError",),
                                ("eps must be finite and >= 0",))
    CASES[f"{form}-eps-negative"] = (_fwd_call(form, lambda a: setattr(a, "eps", -1.0)), ("ValueError",),
                                     ("eps must be finite and >= 0",))
    CASES[f"{form}-k-float64"] = (
        _fwd_call(form, _setattr("k", lambda d: _with(d, dtype=3))), ("ValueError",), ("q, k, v and h must share one dtype",))
    for shape in ((1, 1, 2**31, 16, 16), (1, 1, 1, 1 << 20, 1 << 20), (4, 8, 1 << 20, 1024, 1024)):
        if form == "step":
            shape = shape[:2] + (1,) + shape[3:]
        CASES[f"{form}-sizes-{'x'.join(map(str, shape))}"] = (_sizes_call(form, shape), (), ())

CASES["tuple-of-two"] = (_fwd_call("chunkwise", lambda a: setattr(a, "q", (1, 0))), ("ValueError",),
                         ("tensor must be None or (data_ptr, dtype, strides)",))
CASES["five-strides"] = (_fwd_call("chunkwise", lambda a: setattr(a, "q", (1, 0, (1, 1, 1, 1, 1)))), ("ValueError",),
                         ("at most 4 strides",))
for L in (0, 24, 256, -16):
    CASES[f"limit-chunk_size-{L}"] = (_fwd_call("chunkwise", lambda a, L=L: setattr(a, "chunk_size", L)), ("ValueError",),
                                      (f"chunk_size: limit_chunk needs a power of two in [16, 128], got {L}",))
CASES["xl-chunk_size-8192"] = (_fwd_call("chunkwise", lambda a: setattr(a, "chunk_size", 8192), algorithm=1),
                               ("ValueError",), ("chunk_size: xl_chunk needs a power of two in [16, 4096], got 8192",))
CASES["algorithm-7"] = (_fwd_call("chunkwise", lambda a: setattr(a, "algorithm", 7)), ("ValueError",),
                        ("algorithm: unknown chunkwise algorithm 7",))
CASES["step-S=2"] = (_fwd_call("step", lambda a: setattr(a, "shape", a.shape[:2] + (2,) + a.shape[3:])), ("ValueError",),
                     ("step: S must be 1",))
CASES["step-no-new-states"] = (_fwd_call("step", lambda a: [setattr(a, n, None) for n in ("c_last", "n_last", "m_last")]),
                               ("ValueError",), ("c_last, n_last and m_last",))
CASES["chunkwise-float16-states"] = (_fwd_call("chunkwise", lambda a: None, states=True, state_dtype=np.float16),
                                     ("ValueError",), ("chunkwise states must be float32",))
CASES["chunkwise-two-of-three-states"] = (_fwd_call("chunkwise", lambda a: setattr(a, "m_initial", None), states=True),
                                          ("ValueError",), ("give all of them or none",))
CASES["parallel-initial-states"] = (_fwd_call("parallel", lambda a: None, states=True), ("ValueError",),
                                    ("parallel form has no state",))
for form in ("parallel", "chunkwise"):
    CASES[f"{form}-bwd-dq-inner-stride-2"] = (
        _bwd_call(form, _inner_stride("dq", 2)), ("ValueError",),
        ("dq: innermost stride must be 1",))
    CASES[f"{form}-bwd-di-float64"] = (_bwd_call(form, _setattr("di", lambda d: _with(d, dtype=3))), ("ValueError",),
                                       ("i, f, di and df must share one dtype",))
    CASES[f"{form}-bwd-dh-null"] = (_bwd_call(form, lambda a: setattr(a, "dh", None)), ("ValueError",),
                                    ("dh: null data pointer",))
    CASES[f"{form}-bwd-dh-negative-stride"] = (
        _bwd_call(form, _setattr("dh", lambda d: _with(d, strides=(-d[2][0],) + d[2][1:]))), ("ValueError",),
        ("dh: negative stride",))
CASES["chunkwise-bwd-states-without-gradients"] = (
    _bwd_call("chunkwise", lambda a: [setattr(a, n, None) for n in ("dc_initial", "dn_initial", "dm_initial")], states=True),
    ("ValueError",), ("dc_initial, dn_initial, dm_initial must be given exactly when",))

for case_id, (fn, types, needles) in list(CASES.items()):
    if case_id.startswith("step-") and hasattr(fn, "request"):
        form, mutate, kw = fn.request
        CASES[f"step-direct-{case_id[len('step-'):]}"] = (_fwd_call(form, mutate, direct=True, **kw), types, needles)


def run_cases(ids) -> None:
    """Run the named cases in order, one JSON line each (flushed before the next case starts)."""
    for case_id in ids:
        fn = CASES[case_id][0]
        print(json.dumps({"id": case_id, "outcome": "start"}), flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every exception is a result to report
            row = {"id": case_id, "outcome": "error", "type": type(e).__name__, "message": str(e)}
        else:
            row = {"id": case_id, "outcome": "ok"}
        print(json.dumps(row), flush=True)
        _KEEP.clear()


if __name__ == "__main__":
    run_cases(sys.argv[1:] or list(CASES))

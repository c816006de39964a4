"""Timing of the recurrent kernels (fused step, fused sequence) through the C ABI; correctness first.

    python benchmarks/gpu/recurrent_bench.py [--lib PATH] [--out DIR] [--commit SHA]
    python benchmarks/gpu/recurrent_bench.py --device cpu --smoke     # wiring check, no timing

--lib names a shared library that exports the C ABI of cpp/include/mlstm/mlstm.h (for example the
static core linked whole: ``g++ -shared -o libmlstm_core.so -Wl,--whole-archive libmlstm_core.a
-Wl,--no-whole-archive -lcudart_static``); by default the installed ``mlstm_kernels._core`` module,
which carries the same symbols. Kernels are called with raw pointers on torch's current stream.

What is measured (H100 targets in SPEC §7):
  * the device-to-device copy bandwidth (torch ``copy_`` of 1 GiB; bytes = read + write);
  * step, NH=8, DHQK=256, DHHV=512, bf16 q/k/v/gates, fp32 state, B = 1..256, out of place (a chain
    c0 -> c1 -> ...) and in place, under CUDA-graph replay with the states rotated over at least
    ~192 MiB so that they are not served from L2; next to it a plain torch step (same math, same
    graph replay); bandwidth = (C and n read + written) / time;
  * sequence, B=8, NH=8, S=1024: one launch vs a Python loop of the step kernel.
Every timed kernel is first compared with a float64 torch reference; a wrong kernel is not timed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from cuda_events import median_ms

# ---- the C ABI (cpp/include/mlstm/mlstm.h) -----------------------------------------------------------

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
DEVICE_CPU, DEVICE_CUDA = 0, 1


class _Device(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("index", ctypes.c_int32), ("stream", ctypes.c_void_p)]


class _Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("B", "NH", "S", "DHQK", "DHHV")]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int32), ("reserved", ctypes.c_int32),
                ("stride", ctypes.c_int64 * 4)]


_TENSORS = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial", "h", "c_last", "n_last", "m_last")


class FwdArgs(ctypes.Structure):
    _fields_ = ([("device", _Device), ("shape", _Shape), ("eps", ctypes.c_float), ("chunk_size", ctypes.c_int32),
                 ("algorithm", ctypes.c_int32), ("reserved", ctypes.c_int32)]
                + [(name, _Tensor) for name in _TENSORS]
                + [("saved", ctypes.c_void_p), ("workspace", ctypes.c_void_p)])


class BufferSizes(ctypes.Structure):
    _fields_ = [("workspace_bytes", ctypes.c_size_t), ("saved_bytes", ctypes.c_size_t)]


def load_library(path: str | None) -> ctypes.CDLL:
    if path is None:
        import mlstm_kernels._core as core  # the module exports the C ABI symbols of the static core

        path = core.__file__
    lib = ctypes.CDLL(path)
    for name in ("mlstm_step_fwd", "mlstm_sequence_fwd"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(FwdArgs)]
        fn.restype = ctypes.c_int
    lib.mlstm_sequence_fwd_sizes.argtypes = [ctypes.POINTER(FwdArgs), ctypes.POINTER(BufferSizes)]
    lib.mlstm_sequence_fwd_sizes.restype = ctypes.c_int
    lib.mlstm_last_error.restype = ctypes.c_char_p
    return lib


def _tensor(t: torch.Tensor | None) -> _Tensor:
    a = _Tensor()
    if t is None:
        return a
    a.data, a.dtype = t.data_ptr(), DTYPE_CODE[t.dtype]
    for d, s in enumerate(t.stride()):
        a.stride[d] = s
    return a


def make_args(shape, tensors: dict, eps: float, stream: int) -> FwdArgs:
    """tensors: q, k, v, h as (B, NH, S, D); i, f as (B, NH, S); c (B, NH, DHQK, DHHV); n (B, NH, DHQK);
    m (B, NH). Missing entries are absent."""
    a = FwdArgs()
    dev = tensors["q"].device
    a.device.kind = DEVICE_CUDA if dev.type == "cuda" else DEVICE_CPU
    a.device.index = dev.index or 0
    a.device.stream = stream
    a.shape.B, a.shape.NH, a.shape.S, a.shape.DHQK, a.shape.DHHV = shape
    a.eps = eps
    for name in _TENSORS:
        setattr(a, name, _tensor(tensors.get(name)))
    return a


def call(lib, fn_name: str, args: FwdArgs) -> None:
    status = getattr(lib, fn_name)(ctypes.byref(args))
    if status != 0:
        raise RuntimeError(f"{fn_name}: status {status}: {lib.mlstm_last_error().decode()}")


def with_workspace(lib, args: FwdArgs, device: torch.device) -> tuple[FwdArgs, torch.Tensor | None]:
    """The sequence args with the workspace the core asks for (the tiled form needs one); the tensor
    keeps it alive."""
    sizes = BufferSizes()
    status = lib.mlstm_sequence_fwd_sizes(ctypes.byref(args), ctypes.byref(sizes))
    if status != 0:
        raise RuntimeError(f"mlstm_sequence_fwd_sizes: status {status}: {lib.mlstm_last_error().decode()}")
    if sizes.workspace_bytes == 0:
        return args, None
    workspace = torch.empty(sizes.workspace_bytes, dtype=torch.uint8, device=device)
    args.workspace = workspace.data_ptr()
    return args, workspace


def stream_of(device: torch.device) -> int:
    return torch.cuda.current_stream().cuda_stream if device.type == "cuda" else 0


# ---- references and the plain torch step ------------------------------------------------------------


def torch_step(q, k, v, i, f, c, n, m, eps=1e-6):
    """One step in plain torch, fp32 state: q, k (B, NH, DHQK), v (B, NH, DHHV), i, f, m (B, NH, 1),
    c (B, NH, DHQK, DHHV), n (B, NH, DHQK). Returns h (q's dtype) and the new states."""
    dt = c.dtype
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    f_log = F.logsigmoid(f.to(dt))
    m_new = torch.maximum(f_log + m, i.to(dt))
    fg, ig = torch.exp(f_log + m - m_new), torch.exp(i.to(dt) - m_new)
    q_hat = q * q.shape[-1] ** -0.5
    c_new = fg[..., None] * c + ig[..., None] * (k[..., :, None] * v[..., None, :])
    n_new = fg * n + ig * k
    num = (q_hat[..., None, :] @ c_new).squeeze(-2)
    den = torch.maximum((n_new * q_hat).sum(-1, keepdim=True).abs(), torch.exp(-m_new)) + eps
    return num / den, c_new, n_new, m_new


def reference_sequence(q, k, v, i, f, c, n, m, eps=1e-6):
    """The recurrence in float64 (SPEC §2). Shapes as the ABI, m (B, NH)."""
    d = torch.float64
    c, n, m = c.to(d).clone(), n.to(d).clone(), m.to(d)[..., None].clone()
    hs = []
    for t in range(q.shape[2]):
        h, c, n, m = torch_step(q[:, :, t].to(d), k[:, :, t].to(d), v[:, :, t].to(d), i[:, :, t, None].to(d),
                                f[:, :, t, None].to(d), c, n, m, eps)
        hs.append(h)
    return torch.stack(hs, dim=2), c, n, m[..., 0]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        return float("nan")
    return ((x - ref).norm() / ref.norm()).item()


def require(label: str, err: float, tol: float) -> None:
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {label}: rel.err {err:.2e} (tol {tol:.0e})", flush=True)
    if not ok:
        raise SystemExit(f"refusing to time a wrong kernel: {label}")


# ---- inputs ------------------------------------------------------------------------------------------


def random_inputs(B, NH, S, DHQK, DHHV, dtype, device, gen):
    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale + shift).to(dtype)

    return dict(q=r(B, NH, S, DHQK), k=r(B, NH, S, DHQK), v=r(B, NH, S, DHHV),
                i=r(B, NH, S), f=r(B, NH, S, shift=2.0))


def random_states(B, NH, DHQK, DHHV, device, gen):
    return dict(c=torch.randn(B, NH, DHQK, DHHV, generator=gen, device=device),
                n=torch.randn(B, NH, DHQK, generator=gen, device=device),
                m=torch.randn(B, NH, generator=gen, device=device))


def step_tensors(x, t, src, dst, h):
    """ABI tensors of step t of the inputs x (S steps), states src -> dst (dicts c, n, m)."""
    return dict(q=x["q"][:, :, t:t + 1], k=x["k"][:, :, t:t + 1], v=x["v"][:, :, t:t + 1],
                i=x["i"][:, :, t:t + 1], f=x["f"][:, :, t:t + 1], h=h[:, :, t:t + 1],
                c_initial=src["c"], n_initial=src["n"], m_initial=src["m"],
                c_last=dst["c"], n_last=dst["n"], m_last=dst["m"])


# ---- timing ------------------------------------------------------------------------------------------


def graph_ms_per_call(calls, reps: int = 20) -> float:
    """Captures calls[0..N) into one CUDA graph and returns the median replay time / N."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls:  # warm-up outside the capture
            c()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    return median_ms(graph.replay, reps, warmup=3) / len(calls)


def copy_bandwidth() -> float:
    """Bytes read + written per second of a 1 GiB device-to-device copy."""
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), reps=20, warmup=3)
    return 2 * x.numel() * 4 / (ms * 1e-3)


# ---- the benchmarks ----------------------------------------------------------------------------------


def check_step(lib, B, NH, DHQK, DHHV, dtype, device, gen, in_place: bool):
    x = random_inputs(B, NH, 1, DHQK, DHHV, dtype, device, gen)
    s0 = random_states(B, NH, DHQK, DHHV, device, gen)
    ref_h, ref_c, ref_n, ref_m = reference_sequence(x["q"], x["k"], x["v"], x["i"], x["f"], s0["c"], s0["n"], s0["m"])
    h = torch.full((B, NH, 1, DHHV), float("nan"), dtype=dtype, device=device)
    src = {key: val.clone() for key, val in s0.items()}
    dst = src if in_place else {key: torch.full_like(val, float("nan")) for key, val in s0.items()}
    call(lib, "mlstm_step_fwd", make_args((B, NH, 1, DHQK, DHHV), step_tensors(x, 0, src, dst, h), 1e-6,
                                          stream_of(device)))
    tag = f"step B={B} NH={NH} DHQK={DHQK} DHHV={DHHV} {str(dtype)[6:]} {'in place' if in_place else 'out of place'}"
    tol_h = 1e-4 if dtype == torch.float32 else 1e-2
    require(tag + " h", rel_err(h, ref_h), tol_h)
    require(tag + " c", rel_err(dst["c"], ref_c), 1e-4)
    require(tag + " n", rel_err(dst["n"], ref_n), 1e-4)
    require(tag + " m", rel_err(dst["m"], ref_m), 1e-4)


def bench_step(lib, B, copy_bw, gen, NH=8, DHQK=256, DHHV=512, dtype=torch.bfloat16):
    dev = torch.device("cuda")
    state_bytes = B * NH * (DHQK * DHHV + DHQK + 1) * 4
    moved = 2 * state_bytes  # read + write
    sets = max(2, math.ceil((192 << 20) / state_bytes))
    x = random_inputs(B, NH, 1, DHQK, DHHV, dtype, dev, gen)
    h = torch.empty(B, NH, 1, DHHV, dtype=dtype, device=dev)
    states = [random_states(B, NH, DHQK, DHHV, dev, gen) for _ in range(sets)]
    for s in states:
        s["m"].zero_()
    shape = (B, NH, 1, DHQK, DHHV)
    n_calls = sets * max(1, 16 // sets)

    def ours(j, in_place):
        src = states[j % sets]
        dst = src if in_place else states[(j + 1) % sets]
        return lambda: call(lib, "mlstm_step_fwd", make_args(shape, step_tensors(x, 0, src, dst, h), 1e-6,
                                                             torch.cuda.current_stream().cuda_stream))

    out_of_place = graph_ms_per_call([ours(j, False) for j in range(n_calls)])
    in_place = graph_ms_per_call([ours(j, True) for j in range(n_calls)])

    q, k, v = x["q"][:, :, 0], x["k"][:, :, 0], x["v"][:, :, 0]
    i, f = x["i"][:, :, 0:1], x["f"][:, :, 0:1]

    def plain(j):
        s = states[j % sets]
        return lambda: torch_step(q, k, v, i, f, s["c"], s["n"], s["m"][..., None])

    torch_ms = graph_ms_per_call([plain(j) for j in range(n_calls)])

    # A plain copy of C (nearly all the state's bytes) between the same rotating buffers, timed the same
    # way: what a kernel that only moves the state reaches at this size (launch gap, ramp-up and tail
    # included).
    def copy_c(j):
        src, dst = states[j % sets], states[(j + 1) % sets]
        return lambda: dst["c"].copy_(src["c"])

    copy_c_ms = graph_ms_per_call([copy_c(j) for j in range(n_calls)])
    row = dict(B=B, state_MiB=state_bytes / 2**20, floor_us=moved / copy_bw * 1e6,
               out_of_place_us=out_of_place * 1e3, in_place_us=in_place * 1e3, torch_us=torch_ms * 1e3,
               copy_c_only_us=copy_c_ms * 1e3)
    row["out_of_place_pct_copy"] = 100 * moved / (out_of_place * 1e-3) / copy_bw
    row["in_place_pct_copy"] = 100 * moved / (in_place * 1e-3) / copy_bw
    return row


def bench_sequence(lib, gen, B=8, NH=8, S=1024, DHQK=256, DHHV=512, dtype=torch.bfloat16, device="cuda", timing=True):
    """The sequence kernel against a Python loop of the step kernel. With 16-bit inputs and fp32 states
    (and S >= 256) the core runs the chunkwise form; the same call with bf16 states runs the one-launch
    recurrent kernel (identical on-chip work, the states are only read and written in bf16), so both
    are timed."""
    dev = torch.device(device)
    x = random_inputs(B, NH, S, DHQK, DHHV, dtype, dev, gen)
    s0 = random_states(B, NH, DHQK, DHHV, dev, gen)
    shape = (B, NH, S, DHQK, DHHV)
    tag = f"sequence B={B} NH={NH} S={S} DHQK={DHQK} DHHV={DHHV} {str(dtype)[6:]}"
    tol_h = 1e-4 if dtype == torch.float32 else 1e-2

    def checked_call(states, tol_state, label):
        h = torch.full((B, NH, S, DHHV), float("nan"), dtype=dtype, device=dev)
        last = {key: torch.full_like(val, float("nan")) for key, val in states.items()}
        tensors = dict(q=x["q"], k=x["k"], v=x["v"], i=x["i"], f=x["f"], h=h, c_initial=states["c"],
                       n_initial=states["n"], m_initial=states["m"], c_last=last["c"], n_last=last["n"],
                       m_last=last["m"])
        args, workspace = with_workspace(lib, make_args(shape, tensors, 1e-6, stream_of(dev)), dev)
        call(lib, "mlstm_sequence_fwd", args)
        ref_h, ref_c, ref_n, ref_m = reference_sequence(x["q"], x["k"], x["v"], x["i"], x["f"], states["c"],
                                                        states["n"], states["m"])
        require(f"{tag} {label} h", rel_err(h, ref_h), tol_h)
        for key, ref in (("c", ref_c), ("n", ref_n), ("m", ref_m)):
            require(f"{tag} {label} {key}_last", rel_err(last[key], ref), tol_state)
        return (args, workspace), ref_h, ref_c

    # fp32 states: SPEC §6 allows the input dtype's tolerance on last states; the one-launch kernel
    # meets 1e-4 (its recurrence is fp32 throughout), the tiled form rounds gated values to 16 bits.
    fp32_call, ref_h, ref_c = checked_call(s0, 1e-4 if dtype == torch.float32 else 1e-2, "fp32 states")
    s0_bf16 = {key: val.to(torch.bfloat16) for key, val in s0.items()}
    bf16_call, _, _ = checked_call(s0_bf16, 1e-2, "bf16 states")

    # The same sequence as a Python loop of the step kernel, in place on a copy of the initial state.
    loop_state = {key: val.clone() for key, val in s0.items()}
    h_loop = torch.full((B, NH, S, DHHV), float("nan"), dtype=dtype, device=dev)
    loop_args = [make_args((B, NH, 1, DHQK, DHHV), step_tensors(x, t, loop_state, loop_state, h_loop), 1e-6,
                           stream_of(dev)) for t in range(S)]

    def step_loop():
        for a in loop_args:
            call(lib, "mlstm_step_fwd", a)

    step_loop()
    require(tag + " step loop h", rel_err(h_loop, ref_h), tol_h)
    require(tag + " step loop c_last", rel_err(loop_state["c"], ref_c), 1e-4)
    if not timing:
        return {}
    fused_ms = median_ms(lambda: call(lib, "mlstm_sequence_fwd", fp32_call[0]), reps=10, warmup=3)
    one_launch_ms = median_ms(lambda: call(lib, "mlstm_sequence_fwd", bf16_call[0]), reps=10, warmup=3)
    loop_ms = median_ms(step_loop, reps=3, warmup=1)
    fma = 2 * B * NH * S * DHQK * DHHV  # two fused multiply-adds per state element and step
    return dict(B=B, NH=NH, S=S, fused_ms=fused_ms, one_launch_bf16_states_ms=one_launch_ms, step_loop_ms=loop_ms,
                speedup=loop_ms / fused_ms, one_launch_speedup=loop_ms / one_launch_ms,
                one_launch_tfma_per_s=fma / (one_launch_ms * 1e-3) / 1e12)


def environment(commit: str | None) -> dict:
    env = dict(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda, commit=commit)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, sm_count=props.multi_processor_count)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
            env["driver, max SM clock, SM clock"] = out.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=None, help="shared library exporting the C ABI")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for recurrent_bench.json")
    ap.add_argument("--commit", default=None, help="git commit of the measured tree")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="correctness of small shapes only (any device)")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--step-only", action="store_true", help="time the step kernel only (no sequence)")
    args = ap.parse_args()
    lib = load_library(args.lib)
    gen = torch.Generator(device=args.device).manual_seed(0)
    env = environment(args.commit)
    print(json.dumps(env), flush=True)

    for in_place in (False, True):
        check_step(lib, 3, 5, 48, 80, torch.bfloat16, torch.device(args.device), gen, in_place)
        check_step(lib, 2, 8, 256, 512, torch.float32, torch.device(args.device), gen, in_place)
    if args.smoke:
        bench_sequence(lib, gen, B=2, NH=3, S=40, DHQK=48, DHHV=80, device=args.device, timing=False)
        return

    results = dict(environment=env)
    results["copy_bytes_per_s"] = copy_bw = copy_bandwidth()
    print(f"copy bandwidth (read + write): {copy_bw / 1e12:.3f} TB/s", flush=True)
    for B in (1, 16, 128):
        check_step(lib, B, 8, 256, 512, torch.bfloat16, torch.device("cuda"), gen, in_place=True)
    rows = []
    for B in [int(b) for b in args.batches.split(",")]:
        rows.append(bench_step(lib, B, copy_bw, gen))
        print(json.dumps(rows[-1]), flush=True)
    results["step"] = rows
    seq = None
    if not args.step_only:
        results["sequence"] = seq = bench_sequence(lib, gen)
        print(json.dumps(seq), flush=True)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "recurrent_bench.json"), "w") as fh:
            json.dump(results, fh, indent=2)
    print(f"\n{env.get('device')} | torch {env['torch']} (CUDA {env['torch_cuda']}) | commit {env['commit']}")
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s (read + write)\n")
    print("step: NH=8 DHQK=256 DHHV=512, bf16 inputs, fp32 state, CUDA-graph replay (us per step)")
    print("(copy of C: torch copy_ of the state tensor C alone, same buffers, same replay)")
    print("|   B | state MiB | floor | ours out-of-place | % copy | ours in place | % copy | copy of C | torch |")
    print("|----:|----------:|------:|------------------:|-------:|--------------:|-------:|----------:|------:|")
    for r in rows:
        print(f"| {r['B']:3d} | {r['state_MiB']:9.1f} | {r['floor_us']:5.1f} | {r['out_of_place_us']:17.1f} | "
              f"{r['out_of_place_pct_copy']:5.1f}% | {r['in_place_us']:13.1f} | {r['in_place_pct_copy']:5.1f}% | "
              f"{r['copy_c_only_us']:9.1f} | {r['torch_us']:5.1f} |")
    if seq is None:
        return
    print(f"\nsequence B={seq['B']} NH={seq['NH']} S={seq['S']}, bf16 inputs: Python loop of the step kernel "
          f"{seq['step_loop_ms']:.2f} ms; fused_sequence with fp32 states (tiled form) {seq['fused_ms']:.3f} ms "
          f"({seq['speedup']:.1f}x); one-launch recurrent kernel (bf16 states) {seq['one_launch_bf16_states_ms']:.3f} ms "
          f"({seq['one_launch_speedup']:.1f}x, {seq['one_launch_tfma_per_s']:.1f} T FMA/s)")


if __name__ == "__main__":
    main()

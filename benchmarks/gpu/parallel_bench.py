"""Peer timings for the CUDA parallel form, run on the GPU next to `test_cuda_parallel --bench`.

Times, with CUDA events (median), on the same device and shapes as the C++ benchmark:
  * torch SDPA, flash backend, causal: B=8, NH=32, S=2048, head dim 128, bf16 — forward and
    forward + backward;
  * a plain torch parallel mLSTM with the stablef gate matrix (autograd, fp32): B=1, NH=8, S=4096,
    DHQK = DHHV = 128 — forward + backward.

    python3 benchmarks/gpu/parallel_bench.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from cuda_events import median_ms


def stablef_parallel(q, k, v, i, f, eps=1e-6):
    """Plain torch parallel mLSTM, stablef gate matrix. q, k (B, NH, S, DHQK), v (B, NH, S, DHHV)."""
    S, DHQK = q.shape[-2], q.shape[-1]
    f_log = F.logsigmoid(f)  # (B, NH, S)
    strictly_lower = torch.ones(S, S, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    f_matrix = f_log[..., :, None].expand(*f_log.shape, S).masked_fill(~strictly_lower, 0.0)  # (B, NH, S, S)
    log_d = (f_matrix.cumsum(-2) + i[..., None, :]).masked_fill(~causal, -math.inf)  # (B, NH, S, S)
    m = log_d.amax(-1, keepdim=True)  # (B, NH, S, 1)
    c = (q @ k.transpose(-1, -2)) / math.sqrt(DHQK) * torch.exp(log_d - m)  # (B, NH, S, S)
    n = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps  # (B, NH, S, 1)
    return (c / n) @ v  # (B, NH, S, DHHV)


def main() -> None:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"device {props.name}, torch {torch.__version__}, cuda {torch.version.cuda}")
    torch.manual_seed(0)

    B, NH, S, D = 8, 32, 2048, 128
    q, k, v = (torch.randn(B, NH, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(B, NH, S, D, device=dev, dtype=torch.bfloat16)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))

        def fwd_bwd():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(out, (q, k, v), do)

        fwdbwd = median_ms(fwd_bwd)
    print(f"PEER sdpa-flash causal bf16 B={B} NH={NH} S={S} D={D}: fwd {fwd:.3f} ms, fwd+bwd {fwdbwd:.3f} ms")

    B, NH, S, D = 1, 8, 4096, 128
    q, k, v = (torch.randn(B, NH, S, D, device=dev, dtype=torch.float32, requires_grad=True) for _ in range(3))
    i = torch.randn(B, NH, S, device=dev, requires_grad=True)
    f = (torch.randn(B, NH, S, device=dev) + 3.0).requires_grad_()
    dh = torch.randn(B, NH, S, D, device=dev)

    def ref_fwd_bwd():
        h = stablef_parallel(q, k, v, i, f)
        torch.autograd.grad(h, (q, k, v, i, f), dh)

    with torch.no_grad():
        ref_fwd = median_ms(lambda: stablef_parallel(q, k, v, i, f), warmup=2, reps=5)
    ref = median_ms(ref_fwd_bwd, warmup=2, reps=5)
    print(f"PEER torch-stablef fp32 autograd B={B} NH={NH} S={S} D={D}: fwd {ref_fwd:.3f} ms, fwd+bwd {ref:.3f} ms")


if __name__ == "__main__":
    main()

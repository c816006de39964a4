"""A few out-of-place steps and plain copies of the same state, for ncu to profile side by side.

    ncu --cache-control none --clock-control none -k regex:'recurrent_step|elementwise' \
        python benchmarks/gpu/step_ncu.py --lib PATH --batch 16

The states rotate over four sets so that no step reads what L2 kept from the one before.
"""

from __future__ import annotations

import argparse

import torch

from recurrent_bench import call, load_library, make_args, random_inputs, random_states, step_tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    lib = load_library(args.lib)
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, NH, DHQK, DHHV = args.batch, 8, 256, 512
    x = random_inputs(B, NH, 1, DHQK, DHHV, torch.bfloat16, "cuda", gen)
    h = torch.empty(B, NH, 1, DHHV, dtype=torch.bfloat16, device="cuda")
    states = [random_states(B, NH, DHQK, DHHV, "cuda", gen) for _ in range(4)]
    stream = torch.cuda.current_stream().cuda_stream
    for j in range(args.steps):
        src, dst = states[j % 4], states[(j + 1) % 4]
        call(lib, "mlstm_step_fwd", make_args((B, NH, 1, DHQK, DHHV), step_tensors(x, 0, src, dst, h), 1e-6, stream))
    for j in range(args.steps):
        states[(j + 1) % 4]["c"].copy_(states[j % 4]["c"])
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

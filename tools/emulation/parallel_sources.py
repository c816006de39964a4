# Writes host-emulation copies of the parallel-form CUDA sources (cpp/src/cuda/parallel*) for run.sh
# --parallel: the inline-asm helpers of parallel_warp.cuh get host bodies from emu.h, the dynamic
# shared memory becomes the emulator's buffer and <<<>>> launches become emu::launch.
#   python3 parallel_sources.py <repo>/cpp/src <out>/src
import pathlib
import re
import sys

src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(dst / "cuda").mkdir(parents=True, exist_ok=True)

HOST_BODIES = {
    "smem_address": "{ return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - ::emu::smem()); }",
    "cp_async_16": "{ ::emu::cp_async(::emu::smem() + dst, src, valid); }",
    "cp_async_commit": "{ ::emu::cp_commit(); }",
    "cp_async_wait": "{ ::emu::cp_wait(N); }",
    "ldmatrix_x4": "{ ::mlstm::cuda::chunkwise::emu_ldm(r, 4, ::emu::smem() + addr, false); }",
    "ldmatrix_x4_trans": "{ ::mlstm::cuda::chunkwise::emu_ldm(r, 4, ::emu::smem() + addr, true); }",
    "mma_16816": "{ ::mlstm::cuda::chunkwise::mma16816<T>(d, a, b0, b1); }",
    # ex2.approx.ftz: results below the normal range flush to zero
    "fast_exp2": "{ float y = std::exp2(x); return std::fabs(y) < 1.17549435e-38f ? 0.0f : y; }",
}


def replace_bodies(text):
    for name, body in HOST_BODIES.items():
        m = re.search(r"__device__ __forceinline__ [^;{]*\b" + name + r"\(", text)
        if not m:
            sys.exit(f"parallel_sources.py: no {name} in parallel_warp.cuh")
        i = text.index("{", m.end())
        depth, j = 0, i
        while True:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        text = text[:i] + body + text[j + 1:]
    # the shared-memory store of copy_16_sync
    return re.sub(r'asm volatile\("st\.shared\.v4\.u32[^;]*;\\n" ::"r"\(dst\), "r"\(w\[0\]\), "r"\(w\[1\]\), '
                  r'"r"\(w\[2\]\), "r"\(w\[3\]\)\);', "std::memcpy(::emu::smem() + dst, w, 16);", text)


def split_args(s):
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += {"(": 1, "<": 1, ")": -1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()]


def launch(m):
    args = split_args(m.group(2))
    smem = args[2] if len(args) > 2 else "0"
    return f"::emu::launch([&] {{ {m.group(1)}({m.group(3)}); }}, dim3({args[0]}), dim3({args[1]}), ({smem}));"


for f in sorted((src / "cuda").glob("parallel*")):
    t = f.read_text()
    if f.name == "parallel_warp.cuh":
        t = replace_bodies(t)
    t = t.replace("extern __shared__ __align__(128) unsigned char smem[];", "unsigned char* smem = ::emu::smem();")
    t = re.sub(r"\b__shared__\b", "static", t)
    t = re.sub(r"([\w:]+(?:<[^<>]*>)?)<<<(.*?)>>>\((\w+)\);", launch, t)
    if re.search(r"\basm\b", t):
        sys.exit(f"parallel_sources.py: inline asm left in {f.name}")
    (dst / "cuda" / f.name).write_text(t)

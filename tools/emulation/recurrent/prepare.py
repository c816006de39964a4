# Copies the worktree's cpp/ and tests/cpp into ./src and patches the recurrent files for host emulation.
import re, shutil, sys, os
wt = sys.argv[1]
out = 'src'
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(os.path.join(wt, 'cpp'), os.path.join(out, 'cpp'))
shutil.copytree(os.path.join(wt, 'tests/cpp'), os.path.join(out, 'tests/cpp'))
def patch(path, fn):
    p = os.path.join(out, path); s = open(p).read(); t = fn(s)
    open(p, 'w').write(t)
def common(s):
    # cp.async helpers -> emulated copies that land at wait_group
    s = re.sub(r'(template <int BYTES>\s*__device__ __forceinline__ void cp_async\(void\* smem_dst, const void\* gmem_src\) \{).*?\n\}\n',
               r'\1 ::emu::cp_async_n(smem_dst, gmem_src, BYTES); }\n', s, flags=re.S)
    s = re.sub(r'(__device__ __forceinline__ void cp_async_commit\(\)) \{.*?\}\n', r'\1 { ::emu::cp_commit(); }\n', s)
    s = re.sub(r'(template <int PENDING>\s*__device__ __forceinline__ void cp_async_wait\(\)) \{.*?\n\}\n',
               r'\1 { ::emu::cp_wait(PENDING); }\n', s, flags=re.S)
    assert 'emu::cp_async_n' in s and 'emu::cp_commit' in s and 'emu::cp_wait' in s
    return s
patch('cpp/src/cuda/recurrent_common.cuh', common)
def seq(s):
    n0 = s.count('extern __shared__')
    s = re.sub(r'extern __shared__ __align__\(16\) unsigned char (\w+)\[\];', r'unsigned char* const \1 = ::emu::smem();', s)
    assert n0 == 1 and 'emu::smem' in s
    return s
patch('cpp/src/cuda/recurrent_sequence.cuh', seq)
def rec(s):
    s, n = re.subn(r'(\w+)<<<([^,]+), ([^,]+), ([^,]+), [^>]+>>>\((\w+)\);',
                   r'::emu::launch([&] { \1(\5); }, dim3(\2), dim3(\3), \4);', s)
    assert n == 1, n
    s = s.replace('cudaLaunchKernelEx(&config, kernel, sp)', 'cudaErrorNotSupported')
    if os.environ.get('EMU_PRINT_CONFIG'):
        s = s.replace('  SequenceParams sp;\n', '  std::fprintf(stderr, "config RT=%d TRw=%d TRx=%d TCx=%d W=%d nslab=%d rows=%d threads=%d chunk=%d smem=%d stagger=%d\\n", cfg.RT, cfg.TRw, cfg.TRx, cfg.TCx, cfg.W, cfg.nslab, cfg.rows, cfg.threads, cfg.chunk, cfg.smem.total, int(cfg.stagger));\n  if (std::getenv("EMU_CONFIG_ONLY")) return MLSTM_OK;\n  SequenceParams sp;\n', 1)
    s = s.replace('config.gridDim = ', '(void)').replace('config.blockDim = ', '(void)')
    return s
patch('cpp/src/cuda/recurrent.cu', rec)
def test(s):
    s, n = re.subn(r'\n\s*for \(const StepCase& c : steps\) run_step_case\(rng, c\);', '\n', s)
    s, m = re.subn(r'\n\s*run_step_case\(rng, \{\{[^\n]*graph=\*/true\);', '\n', s)
    assert n == 1 and m == 2, (n, m)
    # one case of the set: MLSTM_TEST_CASE=<index>
    s = s.replace('for (const SeqCase& c : seq) run_sequence_case(rng, c);',
        'const char* only = std::getenv("MLSTM_TEST_CASE");\n  for (size_t j = 0; j < seq.size(); ++j) if (!only || std::atoi(only) == int(j)) run_sequence_case(rng, seq[j]);')
    return s
patch('tests/cpp/test_cuda_recurrent.cpp', test)

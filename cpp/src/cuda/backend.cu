// CUDA backend: device count, the routing of buffer-size queries to each form's file, and the choice
// of kernel for a recurrent sequence.
#include "common/backend.h"
#include "cuda/common.cuh"
#include "cuda/forms.h"

namespace mlstm::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error so later calls start clean
    return 0;
  }
  return count;
}

// A recurrent sequence with 16-bit q/k/v, fp32 states and at least kSequenceTileMinS steps runs as the
// chunkwise form: the same recurrence (SPEC §2: its combined stabiliser is the recurrent running max)
// evaluated a 64-token tile at a time on tensor cores, with the state on chip while a block walks the
// sequence. The one-launch recurrent kernel spends 2 FMA per state element per step on CUDA cores
// and stays the kernel for short sequences (tails and prompts of a few tokens), fp32 inputs and
// 16-bit states. Measured: benchmarks/results/recurrent_h100.md.
namespace {

constexpr int64_t kSequenceTileMinS = 256;

bool sequence_runs_chunkwise(const FwdParams& p) {
  const auto is16 = [](mlstm_dtype t) { return t == MLSTM_FLOAT16 || t == MLSTM_BFLOAT16; };
  const auto fp32_or_absent = [](const TensorView& t) { return t.data == nullptr || t.dtype == MLSTM_FLOAT32; };
  return p.form == Form::kSequence && p.S >= kSequenceTileMinS && is16(p.q.dtype) &&
         fp32_or_absent(p.c_initial) && fp32_or_absent(p.n_initial) && fp32_or_absent(p.m_initial) &&
         fp32_or_absent(p.c_last) && fp32_or_absent(p.n_last) && fp32_or_absent(p.m_last);
}

FwdParams as_chunkwise(const FwdParams& p) {
  FwdParams c = p;
  c.form = Form::kChunkwise;
  c.L = 64;  // the kernels' own tile; the chunk size does not change the function
  c.algorithm = MLSTM_CHUNKWISE_XL;
  c.saved = nullptr;  // nothing for a backward
  return c;
}

}  // namespace

mlstm_status sequence_fwd(const FwdParams& p) {
  return sequence_runs_chunkwise(p) ? chunkwise_fwd(as_chunkwise(p)) : recurrent_sequence_fwd(p);
}

mlstm_status fwd_sizes(const FwdParams& p, mlstm_buffer_sizes* sizes) {
  switch (p.form) {
    case Form::kParallel: return parallel_fwd_sizes(p, sizes);
    case Form::kChunkwise: return chunkwise_fwd_sizes(p, sizes);
    case Form::kSequence:
      if (sequence_runs_chunkwise(p)) {
        MLSTM_RETURN_IF_ERROR(chunkwise_fwd_sizes(as_chunkwise(p), sizes));
        sizes->saved_bytes = 0;  // an inference form saves nothing for a backward
        return MLSTM_OK;
      }
      return recurrent_fwd_sizes(p, sizes);
    case Form::kStep: return recurrent_fwd_sizes(p, sizes);
  }
  return fail(MLSTM_ERROR_INTERNAL, "unknown form");
}

mlstm_status bwd_sizes(const BwdParams& p, mlstm_buffer_sizes* sizes) {
  switch (p.form) {
    case Form::kParallel: return parallel_bwd_sizes(p, sizes);
    case Form::kChunkwise: return chunkwise_bwd_sizes(p, sizes);
    default: return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s has no backward", form_name(p.form));
  }
}

}  // namespace mlstm::cuda

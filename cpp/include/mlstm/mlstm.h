/*
 * mlstm_kernels — the C ABI of the mLSTM core.
 *
 * One header, plain C. Both framework bindings (PyTorch, JAX) and the C++ tests call only what is
 * declared here. The core never allocates device memory: callers ask for the byte sizes of the
 * workspace (scratch, dead after the call) and of the saved buffer (written by a forward, read by
 * the matching backward) and pass buffers of at least that size.
 *
 * Vocabulary (see the project README): B batch, NH heads, S sequence length, DHQK head dim of q/k,
 * DHHV head dim of v/h, L chunk size, NC number of chunks.
 *
 * Tensors are described by mlstm_tensor: a data pointer, a dtype and strides in elements for up to
 * four dimensions in the documented order. The innermost stride must be 1; the other strides may
 * be anything non-negative (views of a larger buffer are fine). Shapes are implied by the problem:
 *   q, k        (B, NH, S, DHQK)        dq, dk likewise
 *   v, h        (B, NH, S, DHHV)        dv, dh likewise
 *   i, f        (B, NH, S)              gate pre-activations; di, df likewise
 *   c           (B, NH, DHQK, DHHV)     matrix memory C = sum k v^T (stabilised)
 *   n           (B, NH, DHQK)           normaliser state
 *   m           (B, NH)                 log-domain stabiliser (torch's (B, NH, 1) has the same strides)
 * Unused stride slots are ignored.
 *
 * Threading: every function is reentrant; the last-error message is per thread.
 * Aliasing: outputs must not overlap inputs, except in mlstm_step_fwd where c/n/m outputs may be the
 * very same buffers as the c/n/m inputs (in-place decoding).
 */
#ifndef MLSTM_MLSTM_H_
#define MLSTM_MLSTM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MLSTM_API __declspec(dllexport)
#else
#define MLSTM_API __attribute__((visibility("default")))
#endif

/* Returned by every function. Details are in mlstm_last_error() of the calling thread. */
typedef enum mlstm_status {
  MLSTM_OK = 0,
  MLSTM_ERROR_INVALID_ARGUMENT = 1, /* null pointer, bad size, bad stride, mismatched dtype */
  MLSTM_ERROR_UNSUPPORTED = 2,      /* valid request outside what this build/device supports */
  MLSTM_ERROR_NOT_COMPILED = 3,     /* e.g. a CUDA device on a CPU-only build */
  MLSTM_ERROR_CUDA = 4,             /* a CUDA runtime call or a kernel launch failed */
  MLSTM_ERROR_INTERNAL = 5
} mlstm_status;

typedef enum mlstm_dtype {
  MLSTM_FLOAT32 = 0,
  MLSTM_FLOAT16 = 1,
  MLSTM_BFLOAT16 = 2,
  MLSTM_FLOAT64 = 3 /* CPU only */
} mlstm_dtype;

typedef enum mlstm_device_kind { MLSTM_DEVICE_CPU = 0, MLSTM_DEVICE_CUDA = 1 } mlstm_device_kind;

/* Which chunkwise tiling to run. Both compute the same function. */
typedef enum mlstm_chunkwise_algorithm {
  MLSTM_CHUNKWISE_LIMIT = 0, /* one level: a whole L x L chunk per block, 16 <= L <= 128 */
  MLSTM_CHUNKWISE_XL = 1     /* two levels: large chunks for the state pass, tiles inside, 16 <= L <= 4096 */
} mlstm_chunkwise_algorithm;

typedef struct mlstm_device {
  int32_t kind;  /* mlstm_device_kind */
  int32_t index; /* CUDA device ordinal; 0 for CPU */
  void* stream;  /* cudaStream_t of the caller (NULL = legacy default stream); ignored on CPU */
} mlstm_device;

typedef struct mlstm_tensor {
  void* data;        /* NULL marks an absent optional tensor */
  int32_t dtype;     /* mlstm_dtype */
  int32_t reserved;  /* must be 0 */
  int64_t stride[4]; /* in elements, documented dimension order; innermost must be 1 */
} mlstm_tensor;

typedef struct mlstm_shape {
  int64_t B, NH, S, DHQK, DHHV;
} mlstm_shape;

typedef struct mlstm_buffer_sizes {
  size_t workspace_bytes; /* scratch for this call */
  size_t saved_bytes;     /* forward only: what the backward needs; keep it between the two calls */
} mlstm_buffer_sizes;

/*
 * Forward of the parallel and chunkwise forms, and the recurrent sequence/step forward.
 *  - parallel: c/n/m initial and last must be absent (the parallel form has no state; its
 *    stabiliser is m_t = max_s logD_{t,s}, i.e. the recurrence started from m = -inf).
 *  - chunkwise: initial states optional (all three or none; absent = zeros, m = 0);
 *    last states optional outputs (all three or none).
 *  - sequence/step: as chunkwise; step requires S == 1 and allows c/n/m last to alias c/n/m initial.
 * q, k, v, h share one dtype (fp32/fp16/bf16, fp64 on CPU); i, f may be any of those; states are
 * fp32 (fp64 on CPU; bf16 allowed for sequence/step states).
 */
typedef struct mlstm_fwd_args {
  mlstm_device device;
  mlstm_shape shape;
  float eps;          /* added after the max in the denominator; default 1e-6 */
  int32_t chunk_size; /* L for chunkwise (power of two); ignored elsewhere */
  int32_t algorithm;  /* mlstm_chunkwise_algorithm; ignored elsewhere */
  int32_t reserved;   /* must be 0 */
  mlstm_tensor q, k, v, i, f;
  mlstm_tensor c_initial, n_initial, m_initial;
  mlstm_tensor h;
  mlstm_tensor c_last, n_last, m_last;
  void* saved;        /* >= saved_bytes, or NULL when no backward will follow */
  void* workspace;    /* >= workspace_bytes, or NULL when that is 0 */
} mlstm_fwd_args;

/*
 * Backward of the parallel and chunkwise forms: exact gradients of the forward function.
 * Inputs: the forward's inputs (q, k, v, i, f, initial states if any), its output h, its saved
 * buffer, the incoming gradients dh and (optionally, all three or none) dc_last, dn_last, dm_last.
 * Outputs: dq, dk, dv, di, df and, when initial states were given, dc_initial, dn_initial, dm_initial.
 * Gradient dtypes: dq/dk/dv as q, di/df as i/f, dc/dn/dm as the states; dh as h.
 */
typedef struct mlstm_bwd_args {
  mlstm_device device;
  mlstm_shape shape;
  float eps;
  int32_t chunk_size;
  int32_t algorithm;
  int32_t reserved;
  mlstm_tensor q, k, v, i, f;
  mlstm_tensor c_initial, n_initial, m_initial;
  mlstm_tensor h;
  const void* saved;
  mlstm_tensor dh;
  mlstm_tensor dc_last, dn_last, dm_last;
  mlstm_tensor dq, dk, dv, di, df;
  mlstm_tensor dc_initial, dn_initial, dm_initial;
  void* workspace;
} mlstm_bwd_args;

/* ---- library information ---- */
MLSTM_API const char* mlstm_version(void);            /* "MAJOR.MINOR.PATCH" of the package */
MLSTM_API const char* mlstm_last_error(void);         /* message of this thread's last failure ("" if none) */
MLSTM_API int mlstm_cuda_compiled(void);              /* 1 if the CUDA backend was built */
MLSTM_API const char* mlstm_cuda_archs(void);         /* e.g. "80-real,90a-real" ("" without CUDA) */
MLSTM_API int mlstm_cuda_device_count(void);          /* 0 without CUDA or without a GPU */
MLSTM_API const char* mlstm_cpu_isa(void);            /* CPU kernels in use: "avx2" or "baseline" */
/* Largest supported head dimension (DHQK or DHHV) of a form on a device kind; 0 = unsupported.
 * form: "parallel", "chunkwise", "sequence", "step". */
MLSTM_API int64_t mlstm_max_head_dim(const char* form, int32_t device_kind);
/* Head dims on this device kind must be multiples of this (1 on CPU, 16 on CUDA). */
MLSTM_API int64_t mlstm_head_dim_multiple(const char* form, int32_t device_kind);

/* ---- buffer sizes (only device, shape, dtypes, chunk_size and algorithm are read) ---- */
MLSTM_API mlstm_status mlstm_parallel_fwd_sizes(const mlstm_fwd_args* args, mlstm_buffer_sizes* sizes);
MLSTM_API mlstm_status mlstm_parallel_bwd_sizes(const mlstm_bwd_args* args, mlstm_buffer_sizes* sizes);
MLSTM_API mlstm_status mlstm_chunkwise_fwd_sizes(const mlstm_fwd_args* args, mlstm_buffer_sizes* sizes);
MLSTM_API mlstm_status mlstm_chunkwise_bwd_sizes(const mlstm_bwd_args* args, mlstm_buffer_sizes* sizes);
MLSTM_API mlstm_status mlstm_sequence_fwd_sizes(const mlstm_fwd_args* args, mlstm_buffer_sizes* sizes);
MLSTM_API mlstm_status mlstm_step_fwd_sizes(const mlstm_fwd_args* args, mlstm_buffer_sizes* sizes);

/* ---- the kernels ---- */
MLSTM_API mlstm_status mlstm_parallel_fwd(const mlstm_fwd_args* args);
MLSTM_API mlstm_status mlstm_parallel_bwd(const mlstm_bwd_args* args);
MLSTM_API mlstm_status mlstm_chunkwise_fwd(const mlstm_fwd_args* args);
MLSTM_API mlstm_status mlstm_chunkwise_bwd(const mlstm_bwd_args* args);
MLSTM_API mlstm_status mlstm_sequence_fwd(const mlstm_fwd_args* args);
MLSTM_API mlstm_status mlstm_step_fwd(const mlstm_fwd_args* args);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MLSTM_MLSTM_H_ */

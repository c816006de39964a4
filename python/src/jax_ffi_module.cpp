// mlstm_kernels._jax_ffi: XLA FFI handlers for the mLSTM core, one per C ABI kernel and platform.
//
// Every handler is a thin, mechanical adapter: it reads the shape from q and v, describes each XLA
// buffer as an mlstm_tensor (dense row-major strides of the ABI's logical shape), checks that the
// workspace and saved buffers XLA allocated are at least what the core asks for, and calls the very
// same C ABI function the torch binding calls. On CUDA it passes XLA's stream and device ordinal.
//
// Calling convention (the Python side, mlstm_kernels/jax/_ffi.py, builds these calls):
//   forward  (parallel, chunkwise, sequence, step)
//     args:  q, k, v, i, f [, c_initial, n_initial, m_initial]
//     rets:  h, saved (u8), workspace (u8) [, c_last, n_last, m_last]
//     attrs: eps (f32), chunk_size (s32), algorithm (s32)
//     An empty saved buffer means "no backward follows" and is passed to the core as NULL.
//   backward (parallel, chunkwise)
//     args:  q, k, v, i, f, h, saved (u8), dh [, c_initial, n_initial, m_initial] [, dc_last, dn_last, dm_last]
//     rets:  dq, dk, dv, di, df, workspace (u8) [, dc_initial, dn_initial, dm_initial]
//     attrs: eps (f32), chunk_size (s32), algorithm (s32)
// Optional state groups are told apart by count: 3 extra forward results are the last states;
// 3 extra backward results are the initial-state gradients (so the initial states are among the
// extra arguments, and whatever remains are the last-state cotangents).
//
// Handlers are exported to Python as capsules in one dict, {platform: {target name: capsule}}, and
// registered there with jax.ffi.register_ffi_target.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <tuple>

#include "mlstm/mlstm.h"
#include "xla/ffi/api/ffi.h"

#ifdef MLSTM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace {

// ---- ABI functions per form ------------------------------------------------------------------

using FwdFn = mlstm_status (*)(const mlstm_fwd_args*);
using FwdSizesFn = mlstm_status (*)(const mlstm_fwd_args*, mlstm_buffer_sizes*);
using BwdFn = mlstm_status (*)(const mlstm_bwd_args*);
using BwdSizesFn = mlstm_status (*)(const mlstm_bwd_args*, mlstm_buffer_sizes*);

struct FwdKernel {
  const char* form;
  FwdFn run;
  FwdSizesFn sizes;
};

struct BwdKernel {
  const char* form;
  BwdFn run;
  BwdSizesFn sizes;
  FwdSizesFn fwd_sizes;  // the size of the saved buffer the matching forward wrote
};

constexpr FwdKernel kParallelFwd{"parallel", mlstm_parallel_fwd, mlstm_parallel_fwd_sizes};
constexpr FwdKernel kChunkwiseFwd{"chunkwise", mlstm_chunkwise_fwd, mlstm_chunkwise_fwd_sizes};
constexpr FwdKernel kSequenceFwd{"sequence", mlstm_sequence_fwd, mlstm_sequence_fwd_sizes};
constexpr FwdKernel kStepFwd{"step", mlstm_step_fwd, mlstm_step_fwd_sizes};
constexpr BwdKernel kParallelBwd{"parallel", mlstm_parallel_bwd, mlstm_parallel_bwd_sizes, mlstm_parallel_fwd_sizes};
constexpr BwdKernel kChunkwiseBwd{"chunkwise", mlstm_chunkwise_bwd, mlstm_chunkwise_bwd_sizes, mlstm_chunkwise_fwd_sizes};

// ---- errors ----------------------------------------------------------------------------------

ffi::Error error_from_status(mlstm_status status) {
  switch (status) {
    case MLSTM_OK: return ffi::Error::Success();
    case MLSTM_ERROR_INVALID_ARGUMENT: return ffi::Error(ffi::ErrorCode::kInvalidArgument, mlstm_last_error());
    case MLSTM_ERROR_UNSUPPORTED:
    case MLSTM_ERROR_NOT_COMPILED: return ffi::Error(ffi::ErrorCode::kUnimplemented, mlstm_last_error());
    default: return ffi::Error(ffi::ErrorCode::kInternal, mlstm_last_error());
  }
}

ffi::Error invalid(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "mlstm_kernels FFI: " + message);
}

// ---- XLA buffers as ABI tensors --------------------------------------------------------------

bool abi_dtype(ffi::DataType type, int32_t* out) {
  switch (type) {
    case ffi::DataType::F32: *out = MLSTM_FLOAT32; return true;
    case ffi::DataType::F16: *out = MLSTM_FLOAT16; return true;
    case ffi::DataType::BF16: *out = MLSTM_BFLOAT16; return true;
    case ffi::DataType::F64: *out = MLSTM_FLOAT64; return true;
    default: return false;
  }
}

// Describes a dense XLA buffer by the ABI's logical dims of that argument (e.g. m (B, NH, 1) as
// (B, NH), a step's q (B, NH, DHQK) as (B, NH, 1, DHQK)): same elements in the same order, so the
// row-major strides of the logical dims address it exactly.
ffi::Error to_tensor(const ffi::AnyBuffer& buffer, const char* name, std::initializer_list<int64_t> dims,
                     mlstm_tensor* t) {
  *t = mlstm_tensor{};
  if (!abi_dtype(buffer.element_type(), &t->dtype))
    return invalid(std::string(name) + ": unsupported element type (expected float32, float16, bfloat16 or float64)");
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  if (static_cast<int64_t>(buffer.element_count()) != count)
    return invalid(std::string(name) + ": has " + std::to_string(buffer.element_count()) + " elements, expected " +
                   std::to_string(count));
  int64_t stride = 1;
  int axis = static_cast<int>(dims.size());
  for (auto it = dims.end(); it != dims.begin();) {
    --it;
    t->stride[--axis] = stride;
    stride *= *it;
  }
  t->data = buffer.untyped_data();
  return ffi::Error::Success();
}

// (B, NH, S, DHQK, DHHV) from q (B, NH, S, DHQK) or, for the step, q (B, NH, DHQK), and v.
ffi::Error shape_from(const ffi::AnyBuffer& q, const ffi::AnyBuffer& v, mlstm_shape* shape) {
  auto qd = q.dimensions();
  auto vd = v.dimensions();
  if ((qd.size() != 4 && qd.size() != 3) || vd.size() != qd.size())
    return invalid("q and v must both have rank 4 (B, NH, S, D) or both rank 3 (B, NH, D)");
  shape->B = qd[0];
  shape->NH = qd[1];
  shape->S = qd.size() == 4 ? qd[2] : 1;
  shape->DHQK = qd[qd.size() - 1];
  shape->DHHV = vd[vd.size() - 1];
  return ffi::Error::Success();
}

#define MLSTM_FFI_RETURN_IF_ERROR(expr)      \
  do {                                       \
    ffi::Error _err = (expr);                \
    if (_err.failure()) return _err;         \
  } while (0)

// The three state tensors (c, n, m) of a shape, in that order.
ffi::Error to_states(const ffi::AnyBuffer& c, const ffi::AnyBuffer& n, const ffi::AnyBuffer& m, const char* prefix,
                     const mlstm_shape& s, mlstm_tensor* tc, mlstm_tensor* tn, mlstm_tensor* tm) {
  const std::string p(prefix);
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(c, (p + "c").c_str(), {s.B, s.NH, s.DHQK, s.DHHV}, tc));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(n, (p + "n").c_str(), {s.B, s.NH, s.DHQK}, tn));
  return to_tensor(m, (p + "m").c_str(), {s.B, s.NH}, tm);
}

ffi::Error check_bytes(const char* what, size_t given, size_t needed) {
  if (given < needed)
    return invalid(std::string(what) + " buffer has " + std::to_string(given) + " bytes but the core needs " +
                   std::to_string(needed));
  return ffi::Error::Success();
}

// ---- forward ---------------------------------------------------------------------------------

ffi::Error run_forward(const FwdKernel& kernel, mlstm_device device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                       ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer f, ffi::RemainingArgs states,
                       ffi::Result<ffi::AnyBuffer> h, ffi::Result<ffi::AnyBuffer> saved,
                       ffi::Result<ffi::AnyBuffer> workspace, ffi::RemainingRets last, float eps,
                       int32_t chunk_size, int32_t algorithm) {
  mlstm_fwd_args a{};
  a.device = device;
  a.eps = eps;
  a.chunk_size = chunk_size;
  a.algorithm = algorithm;
  MLSTM_FFI_RETURN_IF_ERROR(shape_from(q, v, &a.shape));
  const mlstm_shape s = a.shape;
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(q, "q", {s.B, s.NH, s.S, s.DHQK}, &a.q));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(k, "k", {s.B, s.NH, s.S, s.DHQK}, &a.k));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(v, "v", {s.B, s.NH, s.S, s.DHHV}, &a.v));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(i, "i", {s.B, s.NH, s.S}, &a.i));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(f, "f", {s.B, s.NH, s.S}, &a.f));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(*h, "h", {s.B, s.NH, s.S, s.DHHV}, &a.h));

  if (states.size() == 3) {
    auto c0 = states.get<ffi::AnyBuffer>(0), n0 = states.get<ffi::AnyBuffer>(1), m0 = states.get<ffi::AnyBuffer>(2);
    if (!c0 || !n0 || !m0) return invalid("initial states must be arrays");
    MLSTM_FFI_RETURN_IF_ERROR(to_states(*c0, *n0, *m0, "initial ", s, &a.c_initial, &a.n_initial, &a.m_initial));
  } else if (states.size() != 0) {
    return invalid("expected 0 or 3 initial-state arguments, got " + std::to_string(states.size()));
  }
  if (last.size() == 3) {
    auto c1 = last.get<ffi::AnyBuffer>(0), n1 = last.get<ffi::AnyBuffer>(1), m1 = last.get<ffi::AnyBuffer>(2);
    if (!c1 || !n1 || !m1) return invalid("last states must be arrays");
    MLSTM_FFI_RETURN_IF_ERROR(to_states(**c1, **n1, **m1, "last ", s, &a.c_last, &a.n_last, &a.m_last));
  } else if (last.size() != 0) {
    return invalid("expected 0 or 3 last-state results, got " + std::to_string(last.size()));
  }

  mlstm_buffer_sizes sizes{0, 0};
  if (mlstm_status st = kernel.sizes(&a, &sizes); st != MLSTM_OK) return error_from_status(st);
  MLSTM_FFI_RETURN_IF_ERROR(check_bytes("workspace", workspace->size_bytes(), sizes.workspace_bytes));
  // An empty saved buffer: no backward follows (inference), so the core need not write one.
  if (saved->size_bytes() > 0) {
    MLSTM_FFI_RETURN_IF_ERROR(check_bytes("saved", saved->size_bytes(), sizes.saved_bytes));
    a.saved = saved->untyped_data();
  }
  a.workspace = sizes.workspace_bytes > 0 ? workspace->untyped_data() : nullptr;
  return error_from_status(kernel.run(&a));
}

// ---- backward --------------------------------------------------------------------------------

ffi::Error run_backward(const BwdKernel& kernel, mlstm_device device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                        ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer f, ffi::AnyBuffer h,
                        ffi::AnyBuffer saved, ffi::AnyBuffer dh, ffi::RemainingArgs extra,
                        ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                        ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::AnyBuffer> di,
                        ffi::Result<ffi::AnyBuffer> df, ffi::Result<ffi::AnyBuffer> workspace,
                        ffi::RemainingRets dinitial, float eps, int32_t chunk_size, int32_t algorithm) {
  mlstm_bwd_args a{};
  a.device = device;
  a.eps = eps;
  a.chunk_size = chunk_size;
  a.algorithm = algorithm;
  MLSTM_FFI_RETURN_IF_ERROR(shape_from(q, v, &a.shape));
  const mlstm_shape s = a.shape;
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(q, "q", {s.B, s.NH, s.S, s.DHQK}, &a.q));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(k, "k", {s.B, s.NH, s.S, s.DHQK}, &a.k));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(v, "v", {s.B, s.NH, s.S, s.DHHV}, &a.v));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(i, "i", {s.B, s.NH, s.S}, &a.i));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(f, "f", {s.B, s.NH, s.S}, &a.f));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(h, "h", {s.B, s.NH, s.S, s.DHHV}, &a.h));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(dh, "dh", {s.B, s.NH, s.S, s.DHHV}, &a.dh));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(*dq, "dq", {s.B, s.NH, s.S, s.DHQK}, &a.dq));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(*dk, "dk", {s.B, s.NH, s.S, s.DHQK}, &a.dk));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(*dv, "dv", {s.B, s.NH, s.S, s.DHHV}, &a.dv));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(*di, "di", {s.B, s.NH, s.S}, &a.di));
  MLSTM_FFI_RETURN_IF_ERROR(to_tensor(*df, "df", {s.B, s.NH, s.S}, &a.df));

  if (dinitial.size() != 0 && dinitial.size() != 3)
    return invalid("expected 0 or 3 initial-state gradient results, got " + std::to_string(dinitial.size()));
  const bool has_initial = dinitial.size() == 3;
  const size_t n_extra = extra.size();
  if (n_extra != (has_initial ? 3u : 0u) && n_extra != (has_initial ? 6u : 3u))
    return invalid("unexpected number of state arguments (" + std::to_string(n_extra) + ")");
  size_t next = 0;
  if (has_initial) {
    auto c0 = extra.get<ffi::AnyBuffer>(0), n0 = extra.get<ffi::AnyBuffer>(1), m0 = extra.get<ffi::AnyBuffer>(2);
    auto dc0 = dinitial.get<ffi::AnyBuffer>(0), dn0 = dinitial.get<ffi::AnyBuffer>(1),
         dm0 = dinitial.get<ffi::AnyBuffer>(2);
    if (!c0 || !n0 || !m0 || !dc0 || !dn0 || !dm0) return invalid("initial states and their gradients must be arrays");
    MLSTM_FFI_RETURN_IF_ERROR(to_states(*c0, *n0, *m0, "initial ", s, &a.c_initial, &a.n_initial, &a.m_initial));
    MLSTM_FFI_RETURN_IF_ERROR(
        to_states(**dc0, **dn0, **dm0, "gradient of initial ", s, &a.dc_initial, &a.dn_initial, &a.dm_initial));
    next = 3;
  }
  if (n_extra - next == 3) {
    auto dc1 = extra.get<ffi::AnyBuffer>(next), dn1 = extra.get<ffi::AnyBuffer>(next + 1),
         dm1 = extra.get<ffi::AnyBuffer>(next + 2);
    if (!dc1 || !dn1 || !dm1) return invalid("last-state cotangents must be arrays");
    MLSTM_FFI_RETURN_IF_ERROR(
        to_states(*dc1, *dn1, *dm1, "gradient of last ", s, &a.dc_last, &a.dn_last, &a.dm_last));
  }

  mlstm_buffer_sizes sizes{0, 0};
  if (mlstm_status st = kernel.sizes(&a, &sizes); st != MLSTM_OK) return error_from_status(st);
  MLSTM_FFI_RETURN_IF_ERROR(check_bytes("workspace", workspace->size_bytes(), sizes.workspace_bytes));
  // The saved buffer must be the one the forward of the same configuration filled.
  mlstm_fwd_args fa{};
  fa.device = a.device;
  fa.shape = a.shape;
  fa.eps = a.eps;
  fa.chunk_size = a.chunk_size;
  fa.algorithm = a.algorithm;
  fa.q = a.q;
  fa.i = a.i;
  fa.c_initial = a.c_initial;
  fa.n_initial = a.n_initial;
  fa.m_initial = a.m_initial;
  mlstm_buffer_sizes fwd_sizes{0, 0};
  if (mlstm_status st = kernel.fwd_sizes(&fa, &fwd_sizes); st != MLSTM_OK) return error_from_status(st);
  MLSTM_FFI_RETURN_IF_ERROR(check_bytes("saved", saved.size_bytes(), fwd_sizes.saved_bytes));
  a.saved = saved.untyped_data();
  a.workspace = sizes.workspace_bytes > 0 ? workspace->untyped_data() : nullptr;
  return error_from_status(kernel.run(&a));
}

// ---- bindings --------------------------------------------------------------------------------

template <typename Binding>
auto bind_forward(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()  // q (B, NH, S, DHQK)
      .template Arg<ffi::AnyBuffer>()  // k (B, NH, S, DHQK)
      .template Arg<ffi::AnyBuffer>()  // v (B, NH, S, DHHV)
      .template Arg<ffi::AnyBuffer>()  // i (B, NH, S)
      .template Arg<ffi::AnyBuffer>()  // f (B, NH, S)
      .RemainingArgs()                 // [c_initial, n_initial, m_initial]
      .template Ret<ffi::AnyBuffer>()  // h (B, NH, S, DHHV)
      .template Ret<ffi::AnyBuffer>()  // saved (bytes)
      .template Ret<ffi::AnyBuffer>()  // workspace (bytes)
      .RemainingRets()                 // [c_last, n_last, m_last]
      .template Attr<float>("eps")
      .template Attr<int32_t>("chunk_size")
      .template Attr<int32_t>("algorithm");
}

template <typename Binding>
auto bind_backward(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()  // q (B, NH, S, DHQK)
      .template Arg<ffi::AnyBuffer>()  // k (B, NH, S, DHQK)
      .template Arg<ffi::AnyBuffer>()  // v (B, NH, S, DHHV)
      .template Arg<ffi::AnyBuffer>()  // i (B, NH, S)
      .template Arg<ffi::AnyBuffer>()  // f (B, NH, S)
      .template Arg<ffi::AnyBuffer>()  // h (B, NH, S, DHHV)
      .template Arg<ffi::AnyBuffer>()  // saved (bytes)
      .template Arg<ffi::AnyBuffer>()  // dh (B, NH, S, DHHV)
      .RemainingArgs()                 // [c/n/m_initial] [dc/dn/dm_last]
      .template Ret<ffi::AnyBuffer>()  // dq (B, NH, S, DHQK)
      .template Ret<ffi::AnyBuffer>()  // dk (B, NH, S, DHQK)
      .template Ret<ffi::AnyBuffer>()  // dv (B, NH, S, DHHV)
      .template Ret<ffi::AnyBuffer>()  // di (B, NH, S)
      .template Ret<ffi::AnyBuffer>()  // df (B, NH, S)
      .template Ret<ffi::AnyBuffer>()  // workspace (bytes)
      .RemainingRets()                 // [dc_initial, dn_initial, dm_initial]
      .template Attr<float>("eps")
      .template Attr<int32_t>("chunk_size")
      .template Attr<int32_t>("algorithm");
}

constexpr mlstm_device kCpuDevice{MLSTM_DEVICE_CPU, 0, nullptr};

template <const FwdKernel& K>
XLA_FFI_Error* cpu_forward(XLA_FFI_CallFrame* call_frame) {
  static auto* handler = bind_forward(ffi::Ffi::Bind())
                             .To([](auto... args) { return run_forward(K, kCpuDevice, std::move(args)...); })
                             .release();
  return handler->Call(call_frame);
}

template <const BwdKernel& K>
XLA_FFI_Error* cpu_backward(XLA_FFI_CallFrame* call_frame) {
  static auto* handler = bind_backward(ffi::Ffi::Bind())
                             .To([](auto... args) { return run_backward(K, kCpuDevice, std::move(args)...); })
                             .release();
  return handler->Call(call_frame);
}

#ifdef MLSTM_WITH_CUDA
// XLA's stream and device ordinal become the core's mlstm_device, so kernels are ordered with the
// rest of the XLA program and never synchronise.
mlstm_device cuda_device(cudaStream_t stream, int32_t ordinal) {
  return mlstm_device{MLSTM_DEVICE_CUDA, ordinal, static_cast<void*>(stream)};
}

template <const FwdKernel& K>
XLA_FFI_Error* cuda_forward(XLA_FFI_CallFrame* call_frame) {
  static auto* handler =
      bind_forward(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::DeviceOrdinal>())
          .To([](cudaStream_t stream, int32_t ordinal, auto... args) {
            return run_forward(K, cuda_device(stream, ordinal), std::move(args)...);
          })
          .release();
  return handler->Call(call_frame);
}

template <const BwdKernel& K>
XLA_FFI_Error* cuda_backward(XLA_FFI_CallFrame* call_frame) {
  static auto* handler =
      bind_backward(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::DeviceOrdinal>())
          .To([](cudaStream_t stream, int32_t ordinal, auto... args) {
            return run_backward(K, cuda_device(stream, ordinal), std::move(args)...);
          })
          .release();
  return handler->Call(call_frame);
}
#endif

// The one table of FFI targets: name, CPU handler, CUDA handler (null without the CUDA backend).
struct Target {
  const char* name;
  XLA_FFI_Handler* cpu;
  XLA_FFI_Handler* cuda;
};

#ifdef MLSTM_WITH_CUDA
#define MLSTM_TARGET(name, pass, kernel) {name, cpu_##pass<kernel>, cuda_##pass<kernel>}
#else
#define MLSTM_TARGET(name, pass, kernel) {name, cpu_##pass<kernel>, nullptr}
#endif

const Target kTargets[] = {
    MLSTM_TARGET("mlstm_kernels_parallel_fwd", forward, kParallelFwd),
    MLSTM_TARGET("mlstm_kernels_parallel_bwd", backward, kParallelBwd),
    MLSTM_TARGET("mlstm_kernels_chunkwise_fwd", forward, kChunkwiseFwd),
    MLSTM_TARGET("mlstm_kernels_chunkwise_bwd", backward, kChunkwiseBwd),
    MLSTM_TARGET("mlstm_kernels_sequence_fwd", forward, kSequenceFwd),
    MLSTM_TARGET("mlstm_kernels_step_fwd", forward, kStepFwd),
};
#undef MLSTM_TARGET

// ---- buffer sizes for the Python side (trace time) ---------------------------------------------

const FwdKernel* fwd_kernel(const std::string& form) {
  for (const FwdKernel* k : {&kParallelFwd, &kChunkwiseFwd, &kSequenceFwd, &kStepFwd})
    if (form == k->form) return k;
  throw nb::value_error(("unknown form '" + form + "' (parallel, chunkwise, sequence, step)").c_str());
}

const BwdKernel* bwd_kernel(const std::string& form) {
  for (const BwdKernel* k : {&kParallelBwd, &kChunkwiseBwd})
    if (form == k->form) return k;
  throw nb::value_error(("form '" + form + "' has no backward in the core (parallel, chunkwise)").c_str());
}

void raise_on_error(mlstm_status status) {
  if (status == MLSTM_OK) return;
  if (status == MLSTM_ERROR_INVALID_ARGUMENT || status == MLSTM_ERROR_UNSUPPORTED)
    throw nb::value_error(mlstm_last_error());
  throw std::runtime_error(mlstm_last_error());
}

// The sizes queries read only presence, dtype, device, shape, chunk size and algorithm; a present
// optional tensor is marked by any non-null pointer, which the query never dereferences.
char g_present_marker;

mlstm_tensor marker(int32_t dtype, bool present) {
  mlstm_tensor t{};
  t.dtype = dtype;
  t.data = present ? static_cast<void*>(&g_present_marker) : nullptr;
  return t;
}

using Shape5 = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;

mlstm_shape to_shape(const Shape5& s) {
  return mlstm_shape{std::get<0>(s), std::get<1>(s), std::get<2>(s), std::get<3>(s), std::get<4>(s)};
}

nb::tuple fwd_sizes(const std::string& form, int32_t device_kind, int32_t device_index, const Shape5& shape,
                    int32_t qkv_dtype, int32_t gate_dtype, int32_t state_dtype, float eps, int32_t chunk_size,
                    int32_t algorithm, bool has_initial, bool has_last) {
  mlstm_fwd_args a{};
  a.device = mlstm_device{device_kind, device_index, nullptr};
  a.shape = to_shape(shape);
  a.eps = eps;
  a.chunk_size = chunk_size;
  a.algorithm = algorithm;
  a.q = a.k = a.v = a.h = marker(qkv_dtype, true);
  a.i = a.f = marker(gate_dtype, true);
  a.c_initial = a.n_initial = a.m_initial = marker(state_dtype, has_initial);
  a.c_last = a.n_last = a.m_last = marker(state_dtype, has_last);
  mlstm_buffer_sizes sizes{0, 0};
  raise_on_error(fwd_kernel(form)->sizes(&a, &sizes));
  return nb::make_tuple(sizes.workspace_bytes, sizes.saved_bytes);
}

size_t bwd_workspace_bytes(const std::string& form, int32_t device_kind, int32_t device_index, const Shape5& shape,
                           int32_t qkv_dtype, int32_t gate_dtype, int32_t state_dtype, float eps, int32_t chunk_size,
                           int32_t algorithm, bool has_initial, bool has_dlast) {
  mlstm_bwd_args a{};
  a.device = mlstm_device{device_kind, device_index, nullptr};
  a.shape = to_shape(shape);
  a.eps = eps;
  a.chunk_size = chunk_size;
  a.algorithm = algorithm;
  a.q = a.k = a.v = a.h = a.dh = a.dq = a.dk = a.dv = marker(qkv_dtype, true);
  a.i = a.f = a.di = a.df = marker(gate_dtype, true);
  a.c_initial = a.n_initial = a.m_initial = marker(state_dtype, has_initial);
  a.dc_initial = a.dn_initial = a.dm_initial = marker(state_dtype, has_initial);
  a.dc_last = a.dn_last = a.dm_last = marker(state_dtype, has_dlast);
  mlstm_buffer_sizes sizes{0, 0};
  raise_on_error(bwd_kernel(form)->sizes(&a, &sizes));
  return sizes.workspace_bytes;
}

nb::capsule handler_capsule(XLA_FFI_Handler* handler) { return nb::capsule(reinterpret_cast<void*>(handler)); }

}  // namespace

NB_MODULE(_jax_ffi, m) {
  m.doc() = "XLA FFI handlers of the mlstm_kernels core (register with jax.ffi.register_ffi_target).";

  m.def(
      "registrations",
      [] {
        nb::dict cpu, cuda;
        for (const Target& t : kTargets) {
          cpu[t.name] = handler_capsule(t.cpu);
          if (t.cuda != nullptr) cuda[t.name] = handler_capsule(t.cuda);
        }
        nb::dict out;
        out["cpu"] = cpu;
        if (nb::len(cuda) > 0) out["CUDA"] = cuda;
        return out;
      },
      "{platform: {target name: handler capsule}}; 'CUDA' only in builds with the CUDA backend");
  m.def("ffi_api_version", [] { return nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR); },
        "(major, minor) of the XLA FFI headers this module was compiled against");
  m.def("cuda_device_count", [] { return mlstm_cuda_device_count(); });
  m.def("fwd_sizes", &fwd_sizes, nb::arg("form"), nb::arg("device_kind"), nb::arg("device_index"), nb::arg("shape"),
        nb::arg("qkv_dtype"), nb::arg("gate_dtype"), nb::arg("state_dtype"), nb::arg("eps"), nb::arg("chunk_size"),
        nb::arg("algorithm"), nb::arg("has_initial"), nb::arg("has_last"),
        "(workspace_bytes, saved_bytes) of a forward; validates the request with the core's messages");
  m.def("bwd_workspace_bytes", &bwd_workspace_bytes, nb::arg("form"), nb::arg("device_kind"), nb::arg("device_index"),
        nb::arg("shape"), nb::arg("qkv_dtype"), nb::arg("gate_dtype"), nb::arg("state_dtype"), nb::arg("eps"),
        nb::arg("chunk_size"), nb::arg("algorithm"), nb::arg("has_initial"), nb::arg("has_dlast"),
        "workspace bytes of a backward; validates the request with the core's messages");
}

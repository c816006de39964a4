// The C ABI: validate the public arguments, build the kernel params once, dispatch to a backend.
// Every message names the argument and the limit, so the bindings can raise it unchanged.
#include <cmath>
#include <cstring>

#include "common/backend.h"
#include "common/error.h"
#include "common/params.h"
#include "mlstm/mlstm.h"

namespace mlstm {

const char* form_name(Form form) {
  switch (form) {
    case Form::kParallel: return "parallel";
    case Form::kChunkwise: return "chunkwise";
    case Form::kSequence: return "sequence";
    case Form::kStep: return "step";
  }
  return "?";
}

namespace {

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case MLSTM_FLOAT32: return "float32";
    case MLSTM_FLOAT16: return "float16";
    case MLSTM_BFLOAT16: return "bfloat16";
    case MLSTM_FLOAT64: return "float64";
    default: return "unknown";
  }
}

bool is_float_dtype(int32_t dtype) { return dtype >= MLSTM_FLOAT32 && dtype <= MLSTM_FLOAT64; }

// Head-dim limits per form and device kind. CPU: any positive size.
constexpr int64_t kCpuMaxHeadDim = int64_t(1) << 20;

int64_t max_head_dim(Form form, int32_t device_kind) {
  if (device_kind == MLSTM_DEVICE_CPU) return kCpuMaxHeadDim;
  return form == Form::kParallel ? 512 : 1024;
}

int64_t head_dim_multiple(int32_t device_kind) { return device_kind == MLSTM_DEVICE_CPU ? 1 : 16; }

bool parse_form(const char* name, Form* form) {
  if (name == nullptr) return false;
  for (Form f : {Form::kParallel, Form::kChunkwise, Form::kSequence, Form::kStep}) {
    if (std::strcmp(name, form_name(f)) == 0) {
      *form = f;
      return true;
    }
  }
  return false;
}

// One tensor's checks: presence, dtype, strides.
struct Check {
  Form form;
  int32_t device_kind;

  mlstm_status dtype_allowed(const char* name, int32_t dtype, bool allow_fp64_only_on_cpu = true) const {
    if (!is_float_dtype(dtype))
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: unknown dtype code %d (expected float32, float16, bfloat16%s)",
                  name, dtype, device_kind == MLSTM_DEVICE_CPU ? " or float64" : "");
    if (allow_fp64_only_on_cpu && dtype == MLSTM_FLOAT64 && device_kind != MLSTM_DEVICE_CPU)
      return fail(MLSTM_ERROR_UNSUPPORTED, "%s: float64 is supported on CPU only", name);
    return MLSTM_OK;
  }

  mlstm_status tensor(const char* name, const mlstm_tensor& t, int ndim, bool required) const {
    if (t.data == nullptr) {
      if (required) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: null data pointer for a required tensor", name);
      return MLSTM_OK;
    }
    if (t.reserved != 0) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: reserved field must be 0", name);
    MLSTM_RETURN_IF_ERROR(dtype_allowed(name, t.dtype));
    if (t.stride[ndim - 1] != 1)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: innermost stride must be 1, got %lld", name,
                  static_cast<long long>(t.stride[ndim - 1]));
    for (int d = 0; d < ndim - 1; ++d)
      if (t.stride[d] < 0)
        return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: negative stride %lld in dimension %d", name,
                    static_cast<long long>(t.stride[d]), d);
    return MLSTM_OK;
  }

  // Tensors that must share a dtype (skipping absent ones).
  mlstm_status same_dtype(const char* what, std::initializer_list<std::pair<const char*, const mlstm_tensor*>> ts) const {
    const char* first_name = nullptr;
    int32_t first = -1;
    for (auto& [name, t] : ts) {
      if (t->data == nullptr) continue;
      if (first_name == nullptr) {
        first_name = name;
        first = t->dtype;
      } else if (t->dtype != first) {
        return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s must share one dtype: %s is %s but %s is %s", what, first_name,
                    dtype_name(first), name, dtype_name(t->dtype));
      }
    }
    return MLSTM_OK;
  }

  // All present or all absent.
  mlstm_status group(const char* what, std::initializer_list<std::pair<const char*, const mlstm_tensor*>> ts,
                     bool* present) const {
    int n_present = 0, n = 0;
    for (auto& [name, t] : ts) {
      ++n;
      n_present += t->data != nullptr;
    }
    if (n_present != 0 && n_present != n)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: give all of them or none (%d of %d given)", what, n_present, n);
    *present = n_present == n;
    return MLSTM_OK;
  }

  mlstm_status state_dtype(const char* name, const mlstm_tensor& t) const {
    if (t.data == nullptr) return MLSTM_OK;
    bool low_precision_ok = form == Form::kSequence || form == Form::kStep;
    if (t.dtype == MLSTM_FLOAT32 || t.dtype == MLSTM_FLOAT64) return MLSTM_OK;
    if (low_precision_ok) return MLSTM_OK;
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: %s states must be float32%s, got %s", name, form_name(form),
                device_kind == MLSTM_DEVICE_CPU ? " or float64" : "", dtype_name(t.dtype));
  }
};

mlstm_status check_common(Form form, const mlstm_device& device, const mlstm_shape& shape, float eps,
                          int32_t chunk_size, int32_t algorithm, int32_t reserved) {
  if (device.kind != MLSTM_DEVICE_CPU && device.kind != MLSTM_DEVICE_CUDA)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "device.kind: unknown device kind %d (0 = CPU, 1 = CUDA)", device.kind);
  if (device.kind == MLSTM_DEVICE_CUDA) {
#ifndef MLSTM_WITH_CUDA
    return fail(MLSTM_ERROR_NOT_COMPILED, "%s: this build of mlstm_kernels has no CUDA backend", form_name(form));
#else
    int count = cuda::device_count();
    if (device.index < 0 || device.index >= count)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "device.index: CUDA device %d does not exist (%d visible)",
                  device.index, count);
#endif
  }
  if (reserved != 0) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "reserved field must be 0");
  const struct {
    const char* name;
    int64_t value;
  } dims[] = {{"B", shape.B}, {"NH", shape.NH}, {"S", shape.S}, {"DHQK", shape.DHQK}, {"DHHV", shape.DHHV}};
  for (auto& d : dims)
    if (d.value < 1)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: %s must be >= 1, got %lld", form_name(form), d.name,
                  static_cast<long long>(d.value));
  const int64_t max_dim = max_head_dim(form, device.kind);
  const int64_t multiple = head_dim_multiple(device.kind);
  for (auto& d : {dims[3], dims[4]}) {
    if (d.value > max_dim || d.value % multiple != 0)
      return fail(MLSTM_ERROR_UNSUPPORTED, "%s on %s: %s must be a multiple of %lld and at most %lld, got %lld",
                  form_name(form), device.kind == MLSTM_DEVICE_CPU ? "CPU" : "CUDA", d.name,
                  static_cast<long long>(multiple), static_cast<long long>(max_dim), static_cast<long long>(d.value));
  }
  // Element counts must fit in int64 with room to spare: B*NH*S*max(DHQK,DHHV) and the states.
  const double elements = double(shape.B) * double(shape.NH) *
                          (double(shape.S) + double(shape.DHQK)) * double(std::max(shape.DHQK, shape.DHHV));
  if (elements > 4.0e18) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: problem too large (%.3g elements)", form_name(form), elements);
  if (!(eps >= 0.0f) || !std::isfinite(eps))
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "eps must be finite and >= 0, got %g", double(eps));
  if (form == Form::kStep && shape.S != 1)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "step: S must be 1, got %lld", static_cast<long long>(shape.S));
  if (form == Form::kChunkwise) {
    if (algorithm != MLSTM_CHUNKWISE_LIMIT && algorithm != MLSTM_CHUNKWISE_XL)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "algorithm: unknown chunkwise algorithm %d (0 = limit_chunk, 1 = xl_chunk)", algorithm);
    const int32_t lo = 16, hi = algorithm == MLSTM_CHUNKWISE_LIMIT ? 128 : 4096;
    const char* which = algorithm == MLSTM_CHUNKWISE_LIMIT ? "limit_chunk" : "xl_chunk";
    if (chunk_size < lo || chunk_size > hi || (chunk_size & (chunk_size - 1)) != 0)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "chunk_size: %s needs a power of two in [%d, %d], got %d", which, lo, hi,
                  chunk_size);
  }
  return MLSTM_OK;
}

TensorView view(const mlstm_tensor& t) {
  TensorView v;
  v.data = t.data;
  v.dtype = static_cast<mlstm_dtype>(t.dtype);
  for (int d = 0; d < 4; ++d) v.stride[d] = t.stride[d];
  return v;
}

// The fields forward and backward share: launch configuration and the forward's inputs.
template <typename Args, typename Params>
void fill_shared(Form form, const Args& a, Params* p) {
  p->form = form;
  p->device_index = a.device.index;
  p->stream = a.device.stream;
  p->B = a.shape.B;
  p->NH = a.shape.NH;
  p->S = a.shape.S;
  p->DHQK = a.shape.DHQK;
  p->DHHV = a.shape.DHHV;
  p->L = a.chunk_size;
  p->algorithm = static_cast<mlstm_chunkwise_algorithm>(a.algorithm);
  p->eps = a.eps;
  p->qk_scale = 1.0f / std::sqrt(static_cast<float>(a.shape.DHQK));
  p->m_starts_at_neg_inf = form == Form::kParallel;
  p->q = view(a.q);
  p->k = view(a.k);
  p->v = view(a.v);
  p->i = view(a.i);
  p->f = view(a.f);
  p->c_initial = view(a.c_initial);
  p->n_initial = view(a.n_initial);
  p->m_initial = view(a.m_initial);
  p->h = view(a.h);
  p->workspace = a.workspace;
}

// Validates `a` and fills `p`. `sizes_only`: pointers are not read (buffer-size queries).
mlstm_status make_fwd_params(Form form, const mlstm_fwd_args* a, bool sizes_only, FwdParams* p) {
  if (a == nullptr) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: args is NULL", form_name(form));
  MLSTM_RETURN_IF_ERROR(check_common(form, a->device, a->shape, a->eps, a->chunk_size, a->algorithm, a->reserved));
  const Check c{form, a->device.kind};
  MLSTM_RETURN_IF_ERROR(c.dtype_allowed("q", a->q.dtype));
  MLSTM_RETURN_IF_ERROR(c.dtype_allowed("i", a->i.dtype));
  if (!sizes_only) {
    MLSTM_RETURN_IF_ERROR(c.tensor("q", a->q, 4, true));
    MLSTM_RETURN_IF_ERROR(c.tensor("k", a->k, 4, true));
    MLSTM_RETURN_IF_ERROR(c.tensor("v", a->v, 4, true));
    MLSTM_RETURN_IF_ERROR(c.tensor("i", a->i, 3, true));
    MLSTM_RETURN_IF_ERROR(c.tensor("f", a->f, 3, true));
    MLSTM_RETURN_IF_ERROR(c.tensor("h", a->h, 4, true));
    MLSTM_RETURN_IF_ERROR(c.tensor("c_initial", a->c_initial, 4, false));
    MLSTM_RETURN_IF_ERROR(c.tensor("n_initial", a->n_initial, 3, false));
    MLSTM_RETURN_IF_ERROR(c.tensor("m_initial", a->m_initial, 2, false));
    MLSTM_RETURN_IF_ERROR(c.tensor("c_last", a->c_last, 4, false));
    MLSTM_RETURN_IF_ERROR(c.tensor("n_last", a->n_last, 3, false));
    MLSTM_RETURN_IF_ERROR(c.tensor("m_last", a->m_last, 2, false));
    MLSTM_RETURN_IF_ERROR(c.same_dtype("q, k, v and h", {{"q", &a->q}, {"k", &a->k}, {"v", &a->v}, {"h", &a->h}}));
    MLSTM_RETURN_IF_ERROR(c.same_dtype("i and f", {{"i", &a->i}, {"f", &a->f}}));
    MLSTM_RETURN_IF_ERROR(c.same_dtype("the states", {{"c_initial", &a->c_initial}, {"n_initial", &a->n_initial},
                                                      {"m_initial", &a->m_initial}, {"c_last", &a->c_last},
                                                      {"n_last", &a->n_last}, {"m_last", &a->m_last}}));
    const std::pair<const char*, const mlstm_tensor*> states[] = {{"c_initial", &a->c_initial}, {"n_initial", &a->n_initial},
                                                                  {"m_initial", &a->m_initial}, {"c_last", &a->c_last},
                                                                  {"n_last", &a->n_last},       {"m_last", &a->m_last}};
    for (auto& [name, t] : states) MLSTM_RETURN_IF_ERROR(c.state_dtype(name, *t));
  }
  bool has_initial = false, has_last = false;
  MLSTM_RETURN_IF_ERROR(c.group("c_initial, n_initial, m_initial",
                                {{"c_initial", &a->c_initial}, {"n_initial", &a->n_initial}, {"m_initial", &a->m_initial}},
                                &has_initial));
  MLSTM_RETURN_IF_ERROR(c.group("c_last, n_last, m_last",
                                {{"c_last", &a->c_last}, {"n_last", &a->n_last}, {"m_last", &a->m_last}}, &has_last));
  if (!sizes_only && form == Form::kParallel && (has_initial || has_last))
    return fail(MLSTM_ERROR_INVALID_ARGUMENT,
                "parallel: the parallel form has no state; pass no initial states and request no last states "
                "(use a chunkwise kernel for state passing)");
  if (!sizes_only && form == Form::kStep && !has_last)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "step: c_last, n_last and m_last (the new states) are required");

  fill_shared(form, *a, p);
  p->has_initial = has_initial;
  p->has_last = has_last;
  p->c_last = view(a->c_last);
  p->n_last = view(a->n_last);
  p->m_last = view(a->m_last);
  p->saved = a->saved;
  return MLSTM_OK;
}

mlstm_status make_bwd_params(Form form, const mlstm_bwd_args* a, bool sizes_only, BwdParams* p) {
  if (a == nullptr) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s backward: args is NULL", form_name(form));
  MLSTM_RETURN_IF_ERROR(check_common(form, a->device, a->shape, a->eps, a->chunk_size, a->algorithm, a->reserved));
  const Check c{form, a->device.kind};
  MLSTM_RETURN_IF_ERROR(c.dtype_allowed("q", a->q.dtype));
  MLSTM_RETURN_IF_ERROR(c.dtype_allowed("i", a->i.dtype));
  bool has_initial = false, has_dlast = false, has_dinitial = false;
  MLSTM_RETURN_IF_ERROR(c.group("c_initial, n_initial, m_initial",
                                {{"c_initial", &a->c_initial}, {"n_initial", &a->n_initial}, {"m_initial", &a->m_initial}},
                                &has_initial));
  MLSTM_RETURN_IF_ERROR(c.group("dc_last, dn_last, dm_last",
                                {{"dc_last", &a->dc_last}, {"dn_last", &a->dn_last}, {"dm_last", &a->dm_last}}, &has_dlast));
  MLSTM_RETURN_IF_ERROR(c.group("dc_initial, dn_initial, dm_initial",
                                {{"dc_initial", &a->dc_initial}, {"dn_initial", &a->dn_initial}, {"dm_initial", &a->dm_initial}},
                                &has_dinitial));
  if (!sizes_only) {
    const struct {
      const char* name;
      const mlstm_tensor* t;
      int ndim;
      bool required;
    } all[] = {{"q", &a->q, 4, true},           {"k", &a->k, 4, true},
               {"v", &a->v, 4, true},           {"i", &a->i, 3, true},
               {"f", &a->f, 3, true},           {"h", &a->h, 4, true},
               {"dh", &a->dh, 4, true},         {"dq", &a->dq, 4, true},
               {"dk", &a->dk, 4, true},         {"dv", &a->dv, 4, true},
               {"di", &a->di, 3, true},         {"df", &a->df, 3, true},
               {"c_initial", &a->c_initial, 4, false}, {"n_initial", &a->n_initial, 3, false},
               {"m_initial", &a->m_initial, 2, false}, {"dc_last", &a->dc_last, 4, false},
               {"dn_last", &a->dn_last, 3, false},     {"dm_last", &a->dm_last, 2, false},
               {"dc_initial", &a->dc_initial, 4, false}, {"dn_initial", &a->dn_initial, 3, false},
               {"dm_initial", &a->dm_initial, 2, false}};
    for (auto& t : all) MLSTM_RETURN_IF_ERROR(c.tensor(t.name, *t.t, t.ndim, t.required));
    MLSTM_RETURN_IF_ERROR(c.same_dtype("q, k, v, h and their gradients",
                                       {{"q", &a->q}, {"k", &a->k}, {"v", &a->v}, {"h", &a->h}, {"dh", &a->dh},
                                        {"dq", &a->dq}, {"dk", &a->dk}, {"dv", &a->dv}}));
    MLSTM_RETURN_IF_ERROR(c.same_dtype("i, f, di and df", {{"i", &a->i}, {"f", &a->f}, {"di", &a->di}, {"df", &a->df}}));
    MLSTM_RETURN_IF_ERROR(c.same_dtype("the states and their gradients",
                                       {{"c_initial", &a->c_initial}, {"n_initial", &a->n_initial},
                                        {"m_initial", &a->m_initial}, {"dc_last", &a->dc_last},
                                        {"dn_last", &a->dn_last}, {"dm_last", &a->dm_last},
                                        {"dc_initial", &a->dc_initial}, {"dn_initial", &a->dn_initial},
                                        {"dm_initial", &a->dm_initial}}));
    MLSTM_RETURN_IF_ERROR(c.state_dtype("c_initial", a->c_initial));
    MLSTM_RETURN_IF_ERROR(c.state_dtype("dc_last", a->dc_last));
    MLSTM_RETURN_IF_ERROR(c.state_dtype("dc_initial", a->dc_initial));
    if (has_initial != has_dinitial)
      return fail(MLSTM_ERROR_INVALID_ARGUMENT,
                  "dc_initial, dn_initial, dm_initial must be given exactly when c/n/m_initial are given");
    if (form == Form::kParallel && (has_initial || has_dlast))
      return fail(MLSTM_ERROR_INVALID_ARGUMENT, "parallel backward: the parallel form has no state");
  }

  fill_shared(form, *a, p);
  p->has_initial = has_initial;
  p->has_dlast = has_dlast;
  p->saved = a->saved;
  p->dh = view(a->dh);
  p->dc_last = view(a->dc_last);
  p->dn_last = view(a->dn_last);
  p->dm_last = view(a->dm_last);
  p->dq = view(a->dq);
  p->dk = view(a->dk);
  p->dv = view(a->dv);
  p->di = view(a->di);
  p->df = view(a->df);
  p->dc_initial = view(a->dc_initial);
  p->dn_initial = view(a->dn_initial);
  p->dm_initial = view(a->dm_initial);
  return MLSTM_OK;
}

// Checks that the caller passed the buffers the backend asked for.
template <typename Params>
mlstm_status check_buffers(const Params& p, const mlstm_buffer_sizes& sizes, bool saved_required) {
  if (sizes.workspace_bytes > 0 && p.workspace == nullptr)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: workspace is NULL but %zu bytes are needed (query the *_sizes function)",
                form_name(p.form), sizes.workspace_bytes);
  if (saved_required && sizes.saved_bytes > 0 && p.saved == nullptr)
    return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s backward: saved is NULL; pass the buffer the forward filled (%zu bytes)",
                form_name(p.form), sizes.saved_bytes);
  return MLSTM_OK;
}

template <typename Fn>
mlstm_status guarded(Fn&& fn) {
  clear_error();
  try {
    return fn();
  } catch (const std::exception& e) {
    return fail(MLSTM_ERROR_INTERNAL, "internal error: %s", e.what());
  } catch (...) {
    return fail(MLSTM_ERROR_INTERNAL, "internal error: unknown exception");
  }
}

using FwdFn = mlstm_status (*)(const FwdParams&);
using BwdFn = mlstm_status (*)(const BwdParams&);
using FwdSizesFn = mlstm_status (*)(const FwdParams&, mlstm_buffer_sizes*);
using BwdSizesFn = mlstm_status (*)(const BwdParams&, mlstm_buffer_sizes*);

struct Backend {
  FwdSizesFn fwd_sizes;
  BwdSizesFn bwd_sizes;
  FwdFn parallel_fwd, chunkwise_fwd, sequence_fwd, step_fwd;
  BwdFn parallel_bwd, chunkwise_bwd;
};

const Backend& backend_for(int32_t device_kind) {
  static const Backend cpu_backend{cpu::fwd_sizes,     cpu::bwd_sizes,    cpu::parallel_fwd, cpu::chunkwise_fwd,
                                   cpu::sequence_fwd,  cpu::step_fwd,     cpu::parallel_bwd, cpu::chunkwise_bwd};
#ifdef MLSTM_WITH_CUDA
  static const Backend cuda_backend{cuda::fwd_sizes,    cuda::bwd_sizes,   cuda::parallel_fwd, cuda::chunkwise_fwd,
                                    cuda::sequence_fwd, cuda::step_fwd,    cuda::parallel_bwd, cuda::chunkwise_bwd};
  if (device_kind == MLSTM_DEVICE_CUDA) return cuda_backend;
#endif
  (void)device_kind;
  return cpu_backend;
}

FwdFn fwd_fn(const Backend& b, Form form) {
  switch (form) {
    case Form::kParallel: return b.parallel_fwd;
    case Form::kChunkwise: return b.chunkwise_fwd;
    case Form::kSequence: return b.sequence_fwd;
    case Form::kStep: return b.step_fwd;
  }
  return nullptr;
}

mlstm_status run_fwd_sizes(Form form, const mlstm_fwd_args* a, mlstm_buffer_sizes* sizes) {
  return guarded([&] {
    if (sizes == nullptr) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: sizes is NULL", form_name(form));
    FwdParams p;
    MLSTM_RETURN_IF_ERROR(make_fwd_params(form, a, /*sizes_only=*/true, &p));
    *sizes = mlstm_buffer_sizes{0, 0};
    return backend_for(a->device.kind).fwd_sizes(p, sizes);
  });
}

mlstm_status run_bwd_sizes(Form form, const mlstm_bwd_args* a, mlstm_buffer_sizes* sizes) {
  return guarded([&] {
    if (sizes == nullptr) return fail(MLSTM_ERROR_INVALID_ARGUMENT, "%s: sizes is NULL", form_name(form));
    BwdParams p;
    MLSTM_RETURN_IF_ERROR(make_bwd_params(form, a, /*sizes_only=*/true, &p));
    *sizes = mlstm_buffer_sizes{0, 0};
    return backend_for(a->device.kind).bwd_sizes(p, sizes);
  });
}

mlstm_status run_fwd(Form form, const mlstm_fwd_args* a) {
  return guarded([&] {
    FwdParams p;
    MLSTM_RETURN_IF_ERROR(make_fwd_params(form, a, /*sizes_only=*/false, &p));
    const Backend& b = backend_for(a->device.kind);
    mlstm_buffer_sizes sizes{0, 0};
    MLSTM_RETURN_IF_ERROR(b.fwd_sizes(p, &sizes));
    MLSTM_RETURN_IF_ERROR(check_buffers(p, sizes, /*saved_required=*/false));
    return fwd_fn(b, form)(p);
  });
}

mlstm_status run_bwd(Form form, const mlstm_bwd_args* a) {
  return guarded([&] {
    BwdParams p;
    MLSTM_RETURN_IF_ERROR(make_bwd_params(form, a, /*sizes_only=*/false, &p));
    const Backend& b = backend_for(a->device.kind);
    // The saved buffer's size is that of the forward with the same configuration.
    FwdParams fp;
    fp.form = p.form;
    fp.device_index = p.device_index;
    fp.B = p.B, fp.NH = p.NH, fp.S = p.S, fp.DHQK = p.DHQK, fp.DHHV = p.DHHV, fp.L = p.L;
    fp.algorithm = p.algorithm;
    fp.q.dtype = p.q.dtype;
    fp.i.dtype = p.i.dtype;
    fp.has_initial = p.has_initial;
    mlstm_buffer_sizes fwd_sizes{0, 0}, sizes{0, 0};
    MLSTM_RETURN_IF_ERROR(b.fwd_sizes(fp, &fwd_sizes));
    MLSTM_RETURN_IF_ERROR(b.bwd_sizes(p, &sizes));
    sizes.saved_bytes = fwd_sizes.saved_bytes;
    MLSTM_RETURN_IF_ERROR(check_buffers(p, sizes, /*saved_required=*/true));
    return (form == Form::kParallel ? b.parallel_bwd : b.chunkwise_bwd)(p);
  });
}

}  // namespace
}  // namespace mlstm

using mlstm::Form;

extern "C" {

const char* mlstm_version(void) { return MLSTM_VERSION_STRING; }

const char* mlstm_last_error(void) { return mlstm::last_error(); }

int mlstm_cuda_compiled(void) {
#ifdef MLSTM_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

const char* mlstm_cuda_archs(void) {
#ifdef MLSTM_CUDA_ARCHS
  return MLSTM_CUDA_ARCHS;
#else
  return "";
#endif
}

int mlstm_cuda_device_count(void) {
#ifdef MLSTM_WITH_CUDA
  return mlstm::cuda::device_count();
#else
  return 0;
#endif
}

const char* mlstm_cpu_isa(void) { return mlstm::cpu::isa_name(); }

int64_t mlstm_max_head_dim(const char* form, int32_t device_kind) {
  Form f;
  if (!mlstm::parse_form(form, &f)) return 0;
  if (device_kind == MLSTM_DEVICE_CUDA && !mlstm_cuda_compiled()) return 0;
  if (device_kind != MLSTM_DEVICE_CPU && device_kind != MLSTM_DEVICE_CUDA) return 0;
  return mlstm::max_head_dim(f, device_kind);
}

int64_t mlstm_head_dim_multiple(const char* form, int32_t device_kind) {
  Form f;
  if (!mlstm::parse_form(form, &f)) return 0;
  return mlstm::head_dim_multiple(device_kind);
}

mlstm_status mlstm_parallel_fwd_sizes(const mlstm_fwd_args* a, mlstm_buffer_sizes* s) { return mlstm::run_fwd_sizes(Form::kParallel, a, s); }
mlstm_status mlstm_parallel_bwd_sizes(const mlstm_bwd_args* a, mlstm_buffer_sizes* s) { return mlstm::run_bwd_sizes(Form::kParallel, a, s); }
mlstm_status mlstm_chunkwise_fwd_sizes(const mlstm_fwd_args* a, mlstm_buffer_sizes* s) { return mlstm::run_fwd_sizes(Form::kChunkwise, a, s); }
mlstm_status mlstm_chunkwise_bwd_sizes(const mlstm_bwd_args* a, mlstm_buffer_sizes* s) { return mlstm::run_bwd_sizes(Form::kChunkwise, a, s); }
mlstm_status mlstm_sequence_fwd_sizes(const mlstm_fwd_args* a, mlstm_buffer_sizes* s) { return mlstm::run_fwd_sizes(Form::kSequence, a, s); }
mlstm_status mlstm_step_fwd_sizes(const mlstm_fwd_args* a, mlstm_buffer_sizes* s) { return mlstm::run_fwd_sizes(Form::kStep, a, s); }

mlstm_status mlstm_parallel_fwd(const mlstm_fwd_args* a) { return mlstm::run_fwd(Form::kParallel, a); }
mlstm_status mlstm_parallel_bwd(const mlstm_bwd_args* a) { return mlstm::run_bwd(Form::kParallel, a); }
mlstm_status mlstm_chunkwise_fwd(const mlstm_fwd_args* a) { return mlstm::run_fwd(Form::kChunkwise, a); }
mlstm_status mlstm_chunkwise_bwd(const mlstm_bwd_args* a) { return mlstm::run_bwd(Form::kChunkwise, a); }
mlstm_status mlstm_sequence_fwd(const mlstm_fwd_args* a) { return mlstm::run_fwd(Form::kSequence, a); }
mlstm_status mlstm_step_fwd(const mlstm_fwd_args* a) { return mlstm::run_fwd(Form::kStep, a); }

}  // extern "C"

// mlstm_kernels._core: a thin nanobind view of the C ABI (cpp/include/mlstm/mlstm.h).
//
// Framework layers build FwdArgs/BwdArgs from raw pointers, dtype codes and strides (no DLPack, so no
// hidden stream synchronisation and no copies), then call a kernel; the step, called once per decoded
// token, also takes the same fields as plain arguments (step_fwd_direct). A non-OK status becomes a
// Python exception carrying the core's message: ValueError for invalid or unsupported requests,
// RuntimeError for CUDA failures and builds without the requested backend.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <string>

#include "mlstm/mlstm.h"

namespace nb = nanobind;

namespace {

void raise_on_error(mlstm_status status) {
  if (status == MLSTM_OK) return;
  std::string message = mlstm_last_error();
  switch (status) {
    case MLSTM_ERROR_INVALID_ARGUMENT:
    case MLSTM_ERROR_UNSUPPORTED: throw nb::value_error(message.c_str());
    default: throw std::runtime_error(message);
  }
}

// A tensor field accepts None (absent) or (data_ptr, dtype, (s0, s1, s2, s3)) with up to 4 strides.
void set_tensor(mlstm_tensor& t, nb::handle value) {
  t = mlstm_tensor{};
  if (value.is_none()) return;
  auto tup = nb::cast<nb::tuple>(value);
  if (tup.size() != 3) throw nb::value_error("tensor must be None or (data_ptr, dtype, strides)");
  t.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(tup[0]));
  t.dtype = nb::cast<int32_t>(tup[1]);
  auto strides = nb::cast<nb::tuple>(tup[2]);
  if (strides.size() > 4) throw nb::value_error("at most 4 strides");
  for (size_t d = 0; d < strides.size(); ++d) t.stride[d] = nb::cast<int64_t>(strides[d]);
}

nb::object get_tensor(const mlstm_tensor& t) {
  if (t.data == nullptr) return nb::none();
  return nb::make_tuple(reinterpret_cast<uintptr_t>(t.data), t.dtype,
                        nb::make_tuple(t.stride[0], t.stride[1], t.stride[2], t.stride[3]));
}

#define MLSTM_TENSOR_PROP(Cls, name)                                                      \
  def_prop_rw(                                                                            \
      #name, [](const Cls& a) { return get_tensor(a.name); },                             \
      [](Cls& a, nb::handle v) { set_tensor(a.name, v); }, nb::for_setter(nb::arg("value").none()))

// Fields shared by the forward and backward argument structs.
template <typename Cls>
void bind_common(nb::class_<Cls>& cls) {
  cls.def(nb::init<>())
      .def_prop_rw(
          "device", [](const Cls& a) { return nb::make_tuple(a.device.kind, a.device.index, reinterpret_cast<uintptr_t>(a.device.stream)); },
          [](Cls& a, std::tuple<int32_t, int32_t, uintptr_t> d) {
            a.device.kind = std::get<0>(d);
            a.device.index = std::get<1>(d);
            a.device.stream = reinterpret_cast<void*>(std::get<2>(d));
          },
          "(kind, index, stream): kind 0 = CPU, 1 = CUDA; stream is a cudaStream_t as an integer")
      .def_prop_rw(
          "shape", [](const Cls& a) { return nb::make_tuple(a.shape.B, a.shape.NH, a.shape.S, a.shape.DHQK, a.shape.DHHV); },
          [](Cls& a, std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t> s) {
            a.shape = mlstm_shape{std::get<0>(s), std::get<1>(s), std::get<2>(s), std::get<3>(s), std::get<4>(s)};
          },
          "(B, NH, S, DHQK, DHHV)")
      .def_rw("eps", &Cls::eps)
      .def_rw("chunk_size", &Cls::chunk_size)
      .def_rw("algorithm", &Cls::algorithm)
      .MLSTM_TENSOR_PROP(Cls, q)
      .MLSTM_TENSOR_PROP(Cls, k)
      .MLSTM_TENSOR_PROP(Cls, v)
      .MLSTM_TENSOR_PROP(Cls, i)
      .MLSTM_TENSOR_PROP(Cls, f)
      .MLSTM_TENSOR_PROP(Cls, c_initial)
      .MLSTM_TENSOR_PROP(Cls, n_initial)
      .MLSTM_TENSOR_PROP(Cls, m_initial)
      .MLSTM_TENSOR_PROP(Cls, h)
      .def_prop_rw(
          "workspace", [](const Cls& a) { return reinterpret_cast<uintptr_t>(a.workspace); },
          [](Cls& a, uintptr_t p) { a.workspace = reinterpret_cast<void*>(p); });
}

nb::tuple sizes_tuple(const mlstm_buffer_sizes& s) { return nb::make_tuple(s.workspace_bytes, s.saved_bytes); }

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "Thin binding of the mlstm_kernels C ABI (pointers, dtype codes, strides).";

  m.attr("FLOAT32") = int(MLSTM_FLOAT32);
  m.attr("FLOAT16") = int(MLSTM_FLOAT16);
  m.attr("BFLOAT16") = int(MLSTM_BFLOAT16);
  m.attr("FLOAT64") = int(MLSTM_FLOAT64);
  m.attr("DEVICE_CPU") = int(MLSTM_DEVICE_CPU);
  m.attr("DEVICE_CUDA") = int(MLSTM_DEVICE_CUDA);
  m.attr("CHUNKWISE_LIMIT") = int(MLSTM_CHUNKWISE_LIMIT);
  m.attr("CHUNKWISE_XL") = int(MLSTM_CHUNKWISE_XL);

  m.def("version", [] { return std::string(mlstm_version()); });
  m.def("cuda_compiled", [] { return mlstm_cuda_compiled() != 0; });
  m.def("cuda_archs", [] { return std::string(mlstm_cuda_archs()); });
  m.def("cuda_device_count", [] { return mlstm_cuda_device_count(); });
  m.def("cpu_isa", [] { return std::string(mlstm_cpu_isa()); });
  m.def("max_head_dim", [](const std::string& form, int32_t device_kind) { return mlstm_max_head_dim(form.c_str(), device_kind); });
  m.def("head_dim_multiple",
        [](const std::string& form, int32_t device_kind) { return mlstm_head_dim_multiple(form.c_str(), device_kind); });

  nb::class_<mlstm_fwd_args> fwd(m, "FwdArgs", "Arguments of a forward call (mlstm_fwd_args).");
  bind_common(fwd);
  fwd.MLSTM_TENSOR_PROP(mlstm_fwd_args, c_last)
      .MLSTM_TENSOR_PROP(mlstm_fwd_args, n_last)
      .MLSTM_TENSOR_PROP(mlstm_fwd_args, m_last)
      .def_prop_rw(
          "saved", [](const mlstm_fwd_args& a) { return reinterpret_cast<uintptr_t>(a.saved); },
          [](mlstm_fwd_args& a, uintptr_t p) { a.saved = reinterpret_cast<void*>(p); });

  nb::class_<mlstm_bwd_args> bwd(m, "BwdArgs", "Arguments of a backward call (mlstm_bwd_args).");
  bind_common(bwd);
  bwd.MLSTM_TENSOR_PROP(mlstm_bwd_args, dh)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dc_last)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dn_last)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dm_last)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dq)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dk)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dv)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, di)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, df)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dc_initial)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dn_initial)
      .MLSTM_TENSOR_PROP(mlstm_bwd_args, dm_initial)
      .def_prop_rw(
          "saved", [](const mlstm_bwd_args& a) { return reinterpret_cast<uintptr_t>(a.saved); },
          [](mlstm_bwd_args& a, uintptr_t p) { a.saved = reinterpret_cast<const void*>(p); });

  // The kernels release the GIL: CPU kernels may run for a while and CUDA launches never block.
#define MLSTM_BIND_FWD(name)                                                                                 \
  m.def(#name, [](const mlstm_fwd_args& a) {                                                                 \
    mlstm_status s;                                                                                          \
    {                                                                                                        \
      nb::gil_scoped_release release;                                                                        \
      s = mlstm_##name(&a);                                                                                  \
    }                                                                                                        \
    raise_on_error(s);                                                                                       \
  });                                                                                                        \
  m.def(#name "_sizes", [](const mlstm_fwd_args& a) {                                                        \
    mlstm_buffer_sizes sizes{0, 0};                                                                          \
    raise_on_error(mlstm_##name##_sizes(&a, &sizes));                                                        \
    return sizes_tuple(sizes);                                                                               \
  }, "(workspace_bytes, saved_bytes)")
#define MLSTM_BIND_BWD(name)                                                                                 \
  m.def(#name, [](const mlstm_bwd_args& a) {                                                                 \
    mlstm_status s;                                                                                          \
    {                                                                                                        \
      nb::gil_scoped_release release;                                                                        \
      s = mlstm_##name(&a);                                                                                  \
    }                                                                                                        \
    raise_on_error(s);                                                                                       \
  });                                                                                                        \
  m.def(#name "_sizes", [](const mlstm_bwd_args& a) {                                                        \
    mlstm_buffer_sizes sizes{0, 0};                                                                          \
    raise_on_error(mlstm_##name##_sizes(&a, &sizes));                                                        \
    return sizes_tuple(sizes);                                                                               \
  }, "(workspace_bytes, 0)")

  MLSTM_BIND_FWD(parallel_fwd);
  MLSTM_BIND_BWD(parallel_bwd);
  MLSTM_BIND_FWD(chunkwise_fwd);
  MLSTM_BIND_BWD(chunkwise_bwd);
  MLSTM_BIND_FWD(sequence_fwd);
  MLSTM_BIND_FWD(step_fwd);

  // The step with all of its arguments in one call. A decode loop calls the step once per token, and
  // filling a FwdArgs field by field from Python costs more host time than the kernel launch. No size
  // query comes first: the step needs no workspace on any backend, and the core refuses the call,
  // naming the buffer, should that ever change.
  m.def(
      "step_fwd_direct",
      [](std::tuple<int32_t, int32_t, uintptr_t> device, std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t> shape,
         float eps, nb::handle q, nb::handle k, nb::handle v, nb::handle i, nb::handle f, nb::handle c_initial,
         nb::handle n_initial, nb::handle m_initial, nb::handle h, nb::handle c_last, nb::handle n_last,
         nb::handle m_last) {
        mlstm_fwd_args a{};
        a.device = mlstm_device{std::get<0>(device), std::get<1>(device), reinterpret_cast<void*>(std::get<2>(device))};
        a.shape = mlstm_shape{std::get<0>(shape), std::get<1>(shape), std::get<2>(shape), std::get<3>(shape),
                              std::get<4>(shape)};
        a.eps = eps;
        set_tensor(a.q, q);
        set_tensor(a.k, k);
        set_tensor(a.v, v);
        set_tensor(a.i, i);
        set_tensor(a.f, f);
        set_tensor(a.c_initial, c_initial);
        set_tensor(a.n_initial, n_initial);
        set_tensor(a.m_initial, m_initial);
        set_tensor(a.h, h);
        set_tensor(a.c_last, c_last);
        set_tensor(a.n_last, n_last);
        set_tensor(a.m_last, m_last);
        mlstm_status s;
        {
          nb::gil_scoped_release release;
          s = mlstm_step_fwd(&a);
        }
        raise_on_error(s);
      },
      nb::arg("device"), nb::arg("shape"), nb::arg("eps"), nb::arg("q").none(), nb::arg("k").none(),
      nb::arg("v").none(), nb::arg("i").none(), nb::arg("f").none(), nb::arg("c_initial").none(),
      nb::arg("n_initial").none(), nb::arg("m_initial").none(), nb::arg("h").none(), nb::arg("c_last").none(),
      nb::arg("n_last").none(), nb::arg("m_last").none(),
      "mlstm_step_fwd with the FwdArgs fields as arguments: device (kind, index, stream), shape (B, NH, 1, DHQK, DHHV), "
      "eps, then each tensor as (data_ptr, dtype, strides) or None");
}

// The C ABI's error paths: every invalid request returns the right status (never crashes) and a
// message in mlstm_last_error() that names the offending argument; valid calls clear the message;
// the message is per thread.
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "harness.h"
#include "testing.h"

using harness::Config;
using harness::Form;

namespace {

const char* status_name(mlstm_status s) {
  switch (s) {
    case MLSTM_OK: return "OK";
    case MLSTM_ERROR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case MLSTM_ERROR_UNSUPPORTED: return "UNSUPPORTED";
    case MLSTM_ERROR_NOT_COMPILED: return "NOT_COMPILED";
    case MLSTM_ERROR_CUDA: return "CUDA";
    case MLSTM_ERROR_INTERNAL: return "INTERNAL";
  }
  return "?";
}

void expect_error(const std::string& what, mlstm_status got, mlstm_status want, const char* needle) {
  const std::string message = mlstm_last_error();
  const bool ok = got == want && message.find(needle) != std::string::npos;
  std::printf("%s %-60s -> %-16s \"%s\"\n", ok ? "ok  " : "FAIL", what.c_str(), status_name(got), message.c_str());
  CHECK(got == want, "%s: status %s, expected %s", what.c_str(), status_name(got), status_name(want));
  CHECK(message.find(needle) != std::string::npos, "%s: message \"%s\" does not mention \"%s\"", what.c_str(),
        message.c_str(), needle);
}

ref::Inputs<double> small_inputs(bool has_initial, int64_t S = 5) {
  testing::Rng rng(21);
  return harness::random_inputs(rng, 2, 3, S, 4, 6, has_initial);
}

mlstm_status call_fwd(Form form, const mlstm_fwd_args* a) {
  switch (form) {
    case Form::kParallel: return mlstm_parallel_fwd(a);
    case Form::kChunkwise: return mlstm_chunkwise_fwd(a);
    case Form::kSequence: return mlstm_sequence_fwd(a);
    case Form::kStep: return mlstm_step_fwd(a);
  }
  return MLSTM_ERROR_INTERNAL;
}

// Runs `mutate` on valid forward args of `form`, then the call.
void fwd_case(Form form, const std::string& what, const std::function<void(mlstm_fwd_args&)>& mutate, mlstm_status want,
              const char* needle, bool has_initial = false, Config cfg = {}) {
  const int64_t S = form == Form::kStep ? 1 : 5;
  cfg.want_last = form == Form::kStep || (form != Form::kParallel && cfg.want_last);
  harness::FwdRun run(small_inputs(has_initial || form == Form::kStep, S), cfg);
  mlstm_fwd_args a = run.args();
  mutate(a);
  expect_error(std::string(harness::form_name(form)) + ": " + what, call_fwd(form, &a), want, needle);
}

void test_forward_arguments() {
  expect_error("chunkwise: args NULL", mlstm_chunkwise_fwd(nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "args");
  expect_error("parallel: args NULL", mlstm_parallel_fwd(nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "args");
  expect_error("sequence: args NULL", mlstm_sequence_fwd(nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "args");
  expect_error("step: args NULL", mlstm_step_fwd(nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "args");
  {
    harness::FwdRun run(small_inputs(false), Config{});
    mlstm_fwd_args a = run.args();
    expect_error("chunkwise sizes: sizes NULL", mlstm_chunkwise_fwd_sizes(&a, nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "sizes");
    mlstm_buffer_sizes sizes{0, 0};
    expect_error("chunkwise sizes: args NULL", mlstm_chunkwise_fwd_sizes(nullptr, &sizes), MLSTM_ERROR_INVALID_ARGUMENT,
                 "args");
    mlstm_bwd_args b{};
    expect_error("chunkwise backward sizes: sizes NULL", mlstm_chunkwise_bwd_sizes(&b, nullptr),
                 MLSTM_ERROR_INVALID_ARGUMENT, "sizes");
  }

  for (Form form : {Form::kParallel, Form::kChunkwise, Form::kSequence, Form::kStep}) {
    const struct {
      const char* name;
      mlstm_tensor mlstm_fwd_args::*field;
    } required[] = {{"q", &mlstm_fwd_args::q}, {"k", &mlstm_fwd_args::k}, {"v", &mlstm_fwd_args::v},
                    {"i", &mlstm_fwd_args::i}, {"f", &mlstm_fwd_args::f}, {"h", &mlstm_fwd_args::h}};
    for (auto& r : required)
      fwd_case(form, std::string("NULL ") + r.name, [&](mlstm_fwd_args& a) { (a.*r.field).data = nullptr; },
               MLSTM_ERROR_INVALID_ARGUMENT, r.name);
    const struct {
      const char* name;
      int64_t mlstm_shape::*dim;
    } dims[] = {{"B", &mlstm_shape::B},
                {"NH", &mlstm_shape::NH},
                {"S", &mlstm_shape::S},
                {"DHQK", &mlstm_shape::DHQK},
                {"DHHV", &mlstm_shape::DHHV}};
    for (auto& d : dims)
      fwd_case(form, std::string(d.name) + "=0", [&](mlstm_fwd_args& a) { a.shape.*d.dim = 0; },
               MLSTM_ERROR_INVALID_ARGUMENT, d.name);
    fwd_case(form, "q innermost stride 2", [](mlstm_fwd_args& a) { a.q.stride[3] = 2; }, MLSTM_ERROR_INVALID_ARGUMENT, "q");
    fwd_case(form, "i innermost stride 0", [](mlstm_fwd_args& a) { a.i.stride[2] = 0; }, MLSTM_ERROR_INVALID_ARGUMENT, "i");
    fwd_case(form, "v negative stride", [](mlstm_fwd_args& a) { a.v.stride[1] = -4; }, MLSTM_ERROR_INVALID_ARGUMENT, "v");
    fwd_case(form, "k dtype differs from q", [](mlstm_fwd_args& a) { a.k.dtype = MLSTM_FLOAT16; },
             MLSTM_ERROR_INVALID_ARGUMENT, "k");
    fwd_case(form, "f dtype differs from i", [](mlstm_fwd_args& a) { a.f.dtype = MLSTM_BFLOAT16; },
             MLSTM_ERROR_INVALID_ARGUMENT, "f");
    fwd_case(form, "unknown dtype code on v", [](mlstm_fwd_args& a) { a.v.dtype = 9; }, MLSTM_ERROR_INVALID_ARGUMENT, "v");
    fwd_case(form, "negative eps", [](mlstm_fwd_args& a) { a.eps = -1.0f; }, MLSTM_ERROR_INVALID_ARGUMENT, "eps");
    fwd_case(form, "NaN eps", [](mlstm_fwd_args& a) { a.eps = NAN; }, MLSTM_ERROR_INVALID_ARGUMENT, "eps");
    fwd_case(form, "unknown device kind", [](mlstm_fwd_args& a) { a.device.kind = 7; }, MLSTM_ERROR_INVALID_ARGUMENT,
             "device.kind");
    fwd_case(form, "reserved field set", [](mlstm_fwd_args& a) { a.reserved = 1; }, MLSTM_ERROR_INVALID_ARGUMENT, "reserved");
    fwd_case(form, "q reserved field set", [](mlstm_fwd_args& a) { a.q.reserved = 1; }, MLSTM_ERROR_INVALID_ARGUMENT, "q");
  }

  // Chunk size and algorithm (chunkwise only).
  for (int32_t L : {0, 8, 12, 48, 256}) {
    Config cfg;
    fwd_case(Form::kChunkwise, testing::format("limit_chunk chunk_size=%d", L), [&](mlstm_fwd_args& a) { a.chunk_size = L; },
             MLSTM_ERROR_INVALID_ARGUMENT, "chunk_size", false, cfg);
  }
  for (int32_t L : {8, 8192, 1000}) {
    Config cfg;
    cfg.algorithm = MLSTM_CHUNKWISE_XL;
    fwd_case(Form::kChunkwise, testing::format("xl_chunk chunk_size=%d", L), [&](mlstm_fwd_args& a) { a.chunk_size = L; },
             MLSTM_ERROR_INVALID_ARGUMENT, "chunk_size", false, cfg);
  }
  fwd_case(Form::kChunkwise, "algorithm=5", [](mlstm_fwd_args& a) { a.algorithm = 5; }, MLSTM_ERROR_INVALID_ARGUMENT,
           "algorithm");

  // States.
  fwd_case(Form::kChunkwise, "only c_initial given", [](mlstm_fwd_args& a) { a.n_initial.data = a.m_initial.data = nullptr; },
           MLSTM_ERROR_INVALID_ARGUMENT, "c_initial, n_initial, m_initial", true);
  {
    Config cfg;
    cfg.want_last = true;
    fwd_case(Form::kChunkwise, "only m_last requested", [](mlstm_fwd_args& a) { a.c_last.data = a.n_last.data = nullptr; },
             MLSTM_ERROR_INVALID_ARGUMENT, "c_last, n_last, m_last", false, cfg);
  }
  {
    Config cfg;
    cfg.states = MLSTM_FLOAT16;
    fwd_case(Form::kChunkwise, "fp16 initial states", [](mlstm_fwd_args&) {}, MLSTM_ERROR_INVALID_ARGUMENT, "c_initial",
             true, cfg);
  }
  fwd_case(Form::kChunkwise, "n_initial dtype differs", [](mlstm_fwd_args& a) { a.n_initial.dtype = MLSTM_FLOAT32; },
           MLSTM_ERROR_INVALID_ARGUMENT, "n_initial", true);
  fwd_case(Form::kChunkwise, "m_initial innermost stride 3", [](mlstm_fwd_args& a) { a.m_initial.stride[1] = 3; },
           MLSTM_ERROR_INVALID_ARGUMENT, "m_initial", true);
  fwd_case(Form::kParallel, "initial states given", [](mlstm_fwd_args&) {}, MLSTM_ERROR_INVALID_ARGUMENT, "state", true);
  {
    harness::FwdRun run(small_inputs(false), Config{});
    harness::FwdRun with_last(small_inputs(false), [] {
      Config c;
      c.want_last = true;
      return c;
    }());
    mlstm_fwd_args a = run.args();
    mlstm_fwd_args b = with_last.args();
    a.c_last = b.c_last, a.n_last = b.n_last, a.m_last = b.m_last;
    expect_error("parallel: last states requested", mlstm_parallel_fwd(&a), MLSTM_ERROR_INVALID_ARGUMENT, "state");
  }
  fwd_case(Form::kStep, "S=2", [](mlstm_fwd_args& a) { a.shape.S = 2; }, MLSTM_ERROR_INVALID_ARGUMENT, "S");
  fwd_case(Form::kStep, "no new states", [](mlstm_fwd_args& a) { a.c_last = a.n_last = a.m_last = mlstm_tensor{}; },
           MLSTM_ERROR_INVALID_ARGUMENT, "c_last");
}

void test_backward_arguments() {
  expect_error("chunkwise backward: args NULL", mlstm_chunkwise_bwd(nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "args");
  expect_error("parallel backward: args NULL", mlstm_parallel_bwd(nullptr), MLSTM_ERROR_INVALID_ARGUMENT, "args");
  testing::Rng rng(22);
  for (Form form : {Form::kParallel, Form::kChunkwise}) {
    const bool init = form == Form::kChunkwise;
    const ref::Inputs<double> in = small_inputs(init);
    const std::vector<double> dh = rng.normals(size_t(in.B * in.NH * in.S * in.DHHV));
    auto bwd_case = [&](const std::string& what, const std::function<void(mlstm_bwd_args&)>& mutate, mlstm_status want,
                        const char* needle) {
      harness::BwdRun run(in, Config{}, dh, {}, {}, {});
      CHECK(run.fwd.run(form) == MLSTM_OK, "%s", mlstm_last_error());
      mlstm_bwd_args a = run.args();
      mutate(a);
      const mlstm_status st = form == Form::kParallel ? mlstm_parallel_bwd(&a) : mlstm_chunkwise_bwd(&a);
      expect_error(std::string(harness::form_name(form)) + " backward: " + what, st, want, needle);
    };
    const struct {
      const char* name;
      mlstm_tensor mlstm_bwd_args::*field;
    } required[] = {{"dh", &mlstm_bwd_args::dh}, {"dq", &mlstm_bwd_args::dq}, {"dk", &mlstm_bwd_args::dk},
                    {"dv", &mlstm_bwd_args::dv}, {"di", &mlstm_bwd_args::di}, {"df", &mlstm_bwd_args::df},
                    {"q", &mlstm_bwd_args::q},   {"f", &mlstm_bwd_args::f}};
    for (auto& r : required)
      bwd_case(std::string("NULL ") + r.name, [&](mlstm_bwd_args& a) { (a.*r.field).data = nullptr; },
               MLSTM_ERROR_INVALID_ARGUMENT, r.name);
    bwd_case("S=0", [](mlstm_bwd_args& a) { a.shape.S = 0; }, MLSTM_ERROR_INVALID_ARGUMENT, "S");
    bwd_case("dq innermost stride 2", [](mlstm_bwd_args& a) { a.dq.stride[3] = 2; }, MLSTM_ERROR_INVALID_ARGUMENT, "dq");
    bwd_case("dv dtype differs", [](mlstm_bwd_args& a) { a.dv.dtype = MLSTM_FLOAT32; }, MLSTM_ERROR_INVALID_ARGUMENT, "dv");
    bwd_case("di dtype differs", [](mlstm_bwd_args& a) { a.di.dtype = MLSTM_BFLOAT16; }, MLSTM_ERROR_INVALID_ARGUMENT, "di");
    bwd_case("CUDA device", [](mlstm_bwd_args& a) { a.device.kind = MLSTM_DEVICE_CUDA; },
             mlstm_cuda_compiled() ? MLSTM_ERROR_INVALID_ARGUMENT : MLSTM_ERROR_NOT_COMPILED,
             mlstm_cuda_compiled() ? "device.index" : "CUDA");
    if (init) {
      bwd_case("initial states without their gradients",
               [](mlstm_bwd_args& a) { a.dc_initial = a.dn_initial = a.dm_initial = mlstm_tensor{}; },
               MLSTM_ERROR_INVALID_ARGUMENT, "dc_initial");
      bwd_case("chunk_size=3", [](mlstm_bwd_args& a) { a.chunk_size = 3; }, MLSTM_ERROR_INVALID_ARGUMENT, "chunk_size");
    } else {
      harness::BwdRun with_state(small_inputs(true), Config{}, dh, {}, {}, {});
      bwd_case("initial states given", [&](mlstm_bwd_args& a) {
        mlstm_bwd_args b = with_state.args();
        a.c_initial = b.c_initial, a.n_initial = b.n_initial, a.m_initial = b.m_initial;
        a.dc_initial = b.dc_initial, a.dn_initial = b.dn_initial, a.dm_initial = b.dm_initial;
      }, MLSTM_ERROR_INVALID_ARGUMENT, "state");
    }
  }
}

// A CUDA device on a machine (or build) without one: a status, never a crash.
void test_cuda_device_without_gpu() {
  if (mlstm_cuda_device_count() > 0) {
    std::printf("skip CUDA-device error paths: a GPU is present\n");
    return;
  }
  for (Form form : {Form::kParallel, Form::kChunkwise, Form::kSequence, Form::kStep}) {
    const mlstm_status want = mlstm_cuda_compiled() ? MLSTM_ERROR_INVALID_ARGUMENT : MLSTM_ERROR_NOT_COMPILED;
    fwd_case(form, "CUDA device 0 without a GPU", [](mlstm_fwd_args& a) { a.device.kind = MLSTM_DEVICE_CUDA; }, want,
             mlstm_cuda_compiled() ? "device.index" : "CUDA");
    fwd_case(form, "CUDA device 3 without a GPU", [](mlstm_fwd_args& a) { a.device = {MLSTM_DEVICE_CUDA, 3, nullptr}; },
             want, mlstm_cuda_compiled() ? "device.index" : "CUDA");
  }
  harness::FwdRun run(small_inputs(false), Config{});
  mlstm_fwd_args a = run.args();
  a.device.kind = MLSTM_DEVICE_CUDA;
  mlstm_buffer_sizes sizes{0, 0};
  expect_error("chunkwise sizes: CUDA device without a GPU", mlstm_chunkwise_fwd_sizes(&a, &sizes),
               mlstm_cuda_compiled() ? MLSTM_ERROR_INVALID_ARGUMENT : MLSTM_ERROR_NOT_COMPILED,
               mlstm_cuda_compiled() ? "device.index" : "CUDA");
}

// Valid calls clear the message; messages are per thread; queries answer sensibly.
void test_error_state_and_queries() {
  harness::FwdRun run(small_inputs(false), Config{});
  mlstm_fwd_args a = run.args();
  a.q.data = nullptr;
  CHECK(mlstm_chunkwise_fwd(&a) == MLSTM_ERROR_INVALID_ARGUMENT, "NULL q accepted");
  const std::string before = mlstm_last_error();
  std::string other_thread = "unset";
  std::thread([&] { other_thread = mlstm_last_error(); }).join();
  CHECK(other_thread.empty(), "another thread sees this thread's error: \"%s\"", other_thread.c_str());
  a = run.args();
  CHECK(mlstm_chunkwise_fwd(&a) == MLSTM_OK, "valid call failed: %s", mlstm_last_error());
  CHECK(std::strlen(mlstm_last_error()) == 0, "a valid call left \"%s\"", mlstm_last_error());
  std::printf("ok   last error is per thread and cleared by a valid call (was \"%s\")\n", before.c_str());

  int major = -1, minor = -1, patch = -1;
  CHECK(mlstm_version() != nullptr && std::sscanf(mlstm_version(), "%d.%d.%d", &major, &minor, &patch) == 3,
        "version \"%s\" is not MAJOR.MINOR.PATCH", mlstm_version() ? mlstm_version() : "(null)");
  for (const char* form : {"parallel", "chunkwise", "sequence", "step"}) {
    CHECK(mlstm_max_head_dim(form, MLSTM_DEVICE_CPU) >= 1024, "%s: CPU max head dim %lld", form,
          (long long)mlstm_max_head_dim(form, MLSTM_DEVICE_CPU));
    CHECK(mlstm_head_dim_multiple(form, MLSTM_DEVICE_CPU) == 1, "%s: CPU head dim multiple", form);
  }
  CHECK(mlstm_max_head_dim("bogus", MLSTM_DEVICE_CPU) == 0, "unknown form has a head dim");
  CHECK(mlstm_max_head_dim(nullptr, MLSTM_DEVICE_CPU) == 0, "NULL form has a head dim");
  CHECK(mlstm_max_head_dim("chunkwise", 9) == 0, "unknown device kind has a head dim");
  const std::string isa = mlstm_cpu_isa() ? mlstm_cpu_isa() : "(null)";
  CHECK(isa == "avx2" || isa == "baseline", "CPU kernels \"%s\"", isa.c_str());
  mlstm_buffer_sizes sizes{1, 1};
  a = run.args();
  CHECK(mlstm_chunkwise_fwd_sizes(&a, &sizes) == MLSTM_OK, "%s", mlstm_last_error());
  std::printf("ok   CPU chunkwise buffer sizes: workspace %zu, saved %zu bytes\n", sizes.workspace_bytes, sizes.saved_bytes);
}

}  // namespace

int main() {
  test_forward_arguments();
  test_backward_arguments();
  test_cuda_device_without_gpu();
  test_error_state_and_queries();
  return testing::finish("test_abi_errors");
}

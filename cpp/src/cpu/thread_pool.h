// Work distribution of the CPU kernels over the B*NH heads: plain std::thread, started per call and
// joined before it returns. No pool outlives a call, so there is no global state and every entry
// point stays reentrant; no OpenMP, whose runtime clashes with the ones torch and jaxlib bundle.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "cpu/isa.h"

MLSTM_CPU_ISA_BEGIN
namespace mlstm::cpu::MLSTM_CPU_ISA {

// Threads worth starting for n_tasks tasks of about cost_per_task multiply-adds each: at most one per
// hardware thread and per task, and only when each gets enough work to pay for starting it
// (starting a thread costs tens of microseconds, about 2e5 multiply-adds).
inline int worker_count(int64_t n_tasks, double cost_per_task) {
  constexpr double kMinCostPerWorker = 2e5;
  const double by_cost = static_cast<double>(n_tasks) * cost_per_task / kMinCostPerWorker;
  // Small calls (a decode step) stop here: glibc answers hardware_concurrency by reading
  // /sys/devices/system/cpu/online, several microseconds, more than such a call's whole kernel.
  if (n_tasks < 2 || by_cost < 2.0) return 1;
  const unsigned hw = std::thread::hardware_concurrency();
  const int64_t by_hardware = hw == 0 ? 1 : static_cast<int64_t>(hw);
  const int64_t n = std::min({by_hardware, n_tasks, static_cast<int64_t>(std::min(by_cost, 1e6))});
  return static_cast<int>(std::max<int64_t>(1, n));
}

// Calls body(worker, task) for every task in [0, n_tasks), on n_workers threads: the calling thread
// is worker 0. Tasks are handed out one at a time (heads have equal cost, but machines are shared).
// An exception in any worker stops the hand-out and is rethrown here after every thread has joined.
template <typename Body>
void parallel_for(int64_t n_tasks, int n_workers, const Body& body) {
  if (n_workers <= 1 || n_tasks <= 1) {
    for (int64_t task = 0; task < n_tasks; ++task) body(0, task);
    return;
  }
  std::atomic<int64_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n_workers));
  auto run = [&](int worker) {
    try {
      for (int64_t task = next.fetch_add(1); task < n_tasks; task = next.fetch_add(1)) body(worker, task);
    } catch (...) {
      errors[static_cast<size_t>(worker)] = std::current_exception();
      next.store(n_tasks);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n_workers - 1));
  for (int worker = 1; worker < n_workers; ++worker) {
    try {
      threads.emplace_back(run, worker);
    } catch (...) {
      break;  // could not start another thread: the ones running (and this one) do the rest
    }
  }
  run(0);
  for (auto& thread : threads) thread.join();
  for (auto& error : errors)
    if (error) std::rethrow_exception(error);
}

}  // namespace mlstm::cpu::MLSTM_CPU_ISA
MLSTM_CPU_ISA_END

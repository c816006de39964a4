#include <ucontext.h>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "emu.h"  // tools/emulation
namespace emu {
D3 g_tid, g_bid, g_bdim, g_gdim;
namespace {
struct Pending { void* dst; const void* src; bool valid; int bytes; };
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  int wait = 0;  // 0 runnable, 1 block barrier, 2 warp barrier
  unsigned tid = 0;
  std::vector<std::vector<Pending>> groups;
  std::vector<Pending> open;
};
ucontext_t sched;
std::vector<Fiber> fibers;
int cur = -1;
std::function<void()> g_body;
std::vector<unsigned char> g_smem;
uint64_t xch[64][32];
const void* xptr[64][32];
uint32_t xa[64][32][4], xb[64][32][2];
std::mt19937 rng(12345);
void entry() {
  g_body();
  fibers[cur].done = true;
  { size_t n = fibers[cur].open.size(); for (auto& g : fibers[cur].groups) n += g.size(); if (n) std::fprintf(stderr, "emu: cp.async pending at exit\n"); }
  swapcontext(&fibers[cur].ctx, &sched);
}
void yield(int kind) { fibers[cur].wait = kind; swapcontext(&fibers[cur].ctx, &sched); }
}  // namespace
void syncthreads() { yield(1); }
void warp_barrier() { yield(2); }
unsigned char* smem() { return g_smem.data(); }
uint64_t exchange(uint64_t mine, int src) {
  const int w = g_tid.x / 32, l = g_tid.x % 32;
  xch[w][l] = mine;
  warp_barrier();
  uint64_t r = xch[w][src];
  warp_barrier();
  return r;
}
const void* exchange_ptr(const void* mine, int src) {
  const int w = g_tid.x / 32, l = g_tid.x % 32;
  xptr[w][l] = mine;
  warp_barrier();
  const void* r = xptr[w][src];
  warp_barrier();
  return r;
}
void deposit_mma(const uint32_t* a, uint32_t b0, uint32_t b1) {
  const int w = g_tid.x / 32, l = g_tid.x % 32;
  for (int i = 0; i < 4; ++i) xa[w][l][i] = a[i];
  xb[w][l][0] = b0, xb[w][l][1] = b1;
  warp_barrier();
}
void fetch_mma(int lane, uint32_t* a, uint32_t* b) {
  const int w = g_tid.x / 32;
  for (int i = 0; i < 4; ++i) a[i] = xa[w][lane][i];
  b[0] = xb[w][lane][0], b[1] = xb[w][lane][1];
}
void cp_async(void* dst, const void* src, bool valid, int bytes) { fibers[cur].open.push_back({dst, src, valid, bytes}); }
void cp_commit() { auto& f = fibers[cur]; f.groups.push_back(f.open); f.open.clear(); }
void cp_wait(int n) {
  auto& f = fibers[cur];
  while (int(f.groups.size()) > n) {
    for (auto& pd : f.groups.front()) { if (pd.valid) std::memcpy(pd.dst, pd.src, pd.bytes); else std::memset(pd.dst, 0, pd.bytes); }
    f.groups.erase(f.groups.begin());
  }
}
void launch(std::function<void()> body, dim3 grid, dim3 block, size_t smem_bytes) {
  g_body = body;
  g_gdim = {grid.x, grid.y, grid.z};
  g_bdim = {block.x, block.y, block.z};
  const int n = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
  for (unsigned by = 0; by < grid.y; ++by)
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    g_bid = {bx, by, bz};
    g_smem.assign(smem_bytes + 16, 0xff);
    fibers.assign(n, Fiber());
    for (int i = 0; i < n; ++i) {
      Fiber& f = fibers[i];
      f.tid = i;
      f.stack.resize(256 * 1024);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &sched;
      makecontext(&f.ctx, entry, 0);
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    for (;;) {
      bool ran = false;
      std::shuffle(order.begin(), order.end(), rng);
      for (int i : order) {
        Fiber& f = fibers[i];
        if (f.done || f.wait != 0) continue;
        cur = i;
        g_tid = {f.tid % block.x, (f.tid / block.x) % block.y, f.tid / (block.x * block.y)};
        swapcontext(&sched, &f.ctx);
        ran = true;
      }
      if (ran) continue;
      int alive = 0, at_block = 0;
      for (auto& f : fibers) if (!f.done) { ++alive; if (f.wait == 1) ++at_block; }
      if (alive == 0) break;
      bool released = false;
      for (int w = 0; w * 32 < n; ++w) {
        int live = 0, at = 0;
        for (int l = 0; l < 32 && w * 32 + l < n; ++l) { auto& f = fibers[w * 32 + l]; if (!f.done) { ++live; if (f.wait == 2) ++at; } }
        if (at > 0 && at == live) { for (int l = 0; l < 32 && w * 32 + l < n; ++l) fibers[w * 32 + l].wait = 0; released = true; }
        else if (at > 0) { std::fprintf(stderr, "emu: warp %d: %d of %d lanes at a warp op (divergent warp op)\n", w, at, live); std::abort(); }
      }
      if (released) continue;
      if (at_block == alive) { for (auto& f : fibers) if (!f.done) f.wait = 0; continue; }
      std::fprintf(stderr, "emu: deadlock\n"); std::abort();
    }
  }
}
}  // namespace emu

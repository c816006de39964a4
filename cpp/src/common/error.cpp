#include "common/error.h"

#include <cstdio>

namespace mlstm {
namespace {
thread_local std::string g_last_error;
}

mlstm_status fail(mlstm_status status, const char* fmt, ...) {
  char buffer[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buffer, sizeof(buffer), fmt, ap);
  va_end(ap);
  g_last_error = buffer;
  return status;
}

void clear_error() { g_last_error.clear(); }

const char* last_error() { return g_last_error.c_str(); }

}  // namespace mlstm

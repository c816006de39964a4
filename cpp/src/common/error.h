// Per-thread last-error message and the helpers that set it.
#pragma once

#include <cstdarg>
#include <string>

#include "mlstm/mlstm.h"

namespace mlstm {

// Records a printf-style message for mlstm_last_error() of this thread and returns `status`.
mlstm_status fail(mlstm_status status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void clear_error();
const char* last_error();

}  // namespace mlstm

// Return early from a function that returns mlstm_status when `expr` is not MLSTM_OK.
#define MLSTM_RETURN_IF_ERROR(expr)          \
  do {                                       \
    mlstm_status mlstm_status_ = (expr);     \
    if (mlstm_status_ != MLSTM_OK) return mlstm_status_; \
  } while (0)

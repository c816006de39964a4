# The AVX2 objects of the CPU kernels (cpp/src/cpu/isa.h) may define, outside their own namespace,
# only code without AVX instructions: such symbols (std template instantiations) share their names
# with the baseline objects, and the linker keeps one copy for both builds.
#   cmake -DNM=... -DOBJDUMP=... -DOBJECTS="a.o|b.o" -P check_isa_symbols.cmake
string(REPLACE "|" ";" OBJECTS "${OBJECTS}")
set(checked 0)
set(failed "")
foreach(object ${OBJECTS})
  execute_process(COMMAND ${NM} --defined-only ${object} OUTPUT_VARIABLE symbols COMMAND_ERROR_IS_FATAL ANY)
  string(REPLACE "\n" ";" symbols "${symbols}")
  foreach(line ${symbols})
    # Global and weak code or data; symbols naming the avx2 namespace exist in that build only.
    if(NOT line MATCHES "^[0-9a-f]+ [TWVBDRu] ([^ ]+)$")
      continue()
    endif()
    set(symbol "${CMAKE_MATCH_1}")
    if(symbol MATCHES "5mlstm3cpu4avx2" OR symbol MATCHES "^DW\\.ref\\.")
      continue()
    endif()
    execute_process(COMMAND ${OBJDUMP} -d --no-show-raw-insn --disassemble=${symbol} ${object}
                    OUTPUT_VARIABLE code COMMAND_ERROR_IS_FATAL ANY)
    math(EXPR checked "${checked} + 1")
    if(code MATCHES "%ymm|\tv[a-z0-9]+ ")
      list(APPEND failed "${symbol} in ${object}")
    endif()
  endforeach()
endforeach()
if(failed)
  list(JOIN failed "\n  " failed)
  message(FATAL_ERROR "AVX instructions in symbols shared with the baseline build:\n  ${failed}")
endif()
message(STATUS "ok   ${checked} symbols of the AVX2 objects outside mlstm::cpu::avx2 hold no AVX instructions")

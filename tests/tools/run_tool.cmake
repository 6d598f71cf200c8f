# tests/tools/run_tool.cmake — runs one tool command line and checks its exit status and output,
# for the ctest entries of examples/CMakeLists.txt (bad arguments must fail early and say why).
#
#   cmake -DCMD="path/to/tool|--opt|value" -DEXPECT_RC=1 -DEXPECT="regex" [-DREJECT="regex"]
#         -P run_tool.cmake
#
# CMD separates arguments with "|". EXPECT must match stdout + stderr; REJECT must not (e.g. a
# "model:" line proves the model was loaded before the check).
string(REPLACE "|" ";" cmd "${CMD}")
execute_process(COMMAND ${cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 120)
set(all "${out}${err}")
if(NOT "${rc}" STREQUAL "${EXPECT_RC}")
  message(FATAL_ERROR "exit status ${rc}, expected ${EXPECT_RC}\ncommand: ${CMD}\noutput:\n${all}")
endif()
if(DEFINED EXPECT AND NOT all MATCHES "${EXPECT}")
  message(FATAL_ERROR "output does not match '${EXPECT}'\ncommand: ${CMD}\noutput:\n${all}")
endif()
if(DEFINED REJECT AND NOT "${REJECT}" STREQUAL "" AND all MATCHES "${REJECT}")
  message(FATAL_ERROR "output matches '${REJECT}', which it must not\ncommand: ${CMD}\noutput:\n${all}")
endif()
if(DEFINED EXPECT_STDOUT AND NOT out MATCHES "${EXPECT_STDOUT}")
  message(FATAL_ERROR "stdout does not match '${EXPECT_STDOUT}'\ncommand: ${CMD}\nstdout:\n${out}")
endif()

# tools/quality.py --resume, over stand-in tools (a Python script; no build needed).
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME tools.quality_resume
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/quality_resume.py)
  set_tests_properties(tools.quality_resume PROPERTIES LABELS tools TIMEOUT 120)
endif()

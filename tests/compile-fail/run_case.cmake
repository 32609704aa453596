# cmake -DFLAGS=<compile_flags.cmake> -DSOURCE=<case.cpp> [-DDEFINITIONS=<NAME=VALUE;...>] -P run_case.cmake
#
# Compiles SOURCE (syntax and constant evaluation only) with the compiler and flags of the test
# translation units, written to FLAGS by tests/CMakeLists.txt, plus DEFINITIONS. The case states what
# must happen in a line of its own:
#   // expect: compiles        the compilation must succeed;
#   // expect: <text>          it must fail, and the diagnostics must contain <text> verbatim.
# A failure for another reason (a typo, a missing header) does not contain <text> and fails the test.
cmake_minimum_required(VERSION 3.25)
foreach(var IN ITEMS FLAGS SOURCE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "usage: cmake -DFLAGS=<file> -DSOURCE=<file> [-DDEFINITIONS=<list>] -P run_case.cmake")
  endif()
endforeach()
include("${FLAGS}")

file(STRINGS "${SOURCE}" expect_lines REGEX "^// expect: ")
list(LENGTH expect_lines count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "${SOURCE}: needs exactly one line '// expect: <diagnostic text>' or "
                      "'// expect: compiles' (found ${count})")
endif()
string(REGEX REPLACE "^// expect: " "" expect "${expect_lines}")
string(STRIP "${expect}" expect)

separate_arguments(args UNIX_COMMAND "${DSX_CF_FLAGS}")
list(APPEND args ${DSX_CF_STANDARD} ${DSX_CF_OPTIONS})
foreach(definition IN LISTS DSX_CF_DEFINITIONS DEFINITIONS)
  list(APPEND args "-D${definition}")
endforeach()
# The compiler's own directories stay implicit, as in CMake's compile lines (-I/usr/include would
# break the #include_next chain of the C++ library headers).
list(REMOVE_DUPLICATES DSX_CF_INCLUDES)
foreach(dir IN LISTS DSX_CF_INCLUDES)
  if(NOT dir IN_LIST DSX_CF_IMPLICIT_INCLUDES)
    list(APPEND args "-I${dir}")
  endif()
endforeach()
# Plain diagnostics that quote the offending source line: checks.hpp's rule text is in that line.
list(APPEND args -fsyntax-only -fdiagnostics-color=never -fdiagnostics-show-caret)

execute_process(COMMAND "${DSX_CF_COMPILER}" ${args} "${SOURCE}"
                RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
list(JOIN args " " shown)
if(expect STREQUAL "compiles")
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "${SOURCE} must compile but did not:\n${DSX_CF_COMPILER} ${shown} ${SOURCE}\n${output}")
  endif()
  message(STATUS "compiled as expected: ${SOURCE} (${DEFINITIONS})")
  return()
endif()
if(status EQUAL 0)
  message(FATAL_ERROR "${SOURCE} must not compile, but it did:\n${DSX_CF_COMPILER} ${shown} ${SOURCE}")
endif()
string(FIND "${output}" "${expect}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${SOURCE} failed to compile, but its diagnostics do not contain the expected text\n"
                      "  ${expect}\n${DSX_CF_COMPILER} ${shown} ${SOURCE}\n${output}")
endif()
message(STATUS "failed as expected (${DEFINITIONS}) with: ${expect}")

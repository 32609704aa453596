# cmake -DCOMMAND=<program;args...> -DMATCH=<regex> -P run_and_match.cmake
#
# Runs COMMAND and succeeds when it exits with status 0 and one line of its standard output matches
# the regular expression MATCH (^ and $ anchor at that line). Used by CTest for commands whose output
# must contain a value, which PASS_REGULAR_EXPRESSION cannot combine with the exit status.
cmake_minimum_required(VERSION 3.25)
if(NOT DEFINED COMMAND OR NOT DEFINED MATCH)
  message(FATAL_ERROR "usage: cmake -DCOMMAND=<program;args> -DMATCH=<regex> -P run_and_match.cmake")
endif()
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE errors)
message("${output}${errors}")
if(NOT status EQUAL 0)
  message(FATAL_ERROR "'${COMMAND}' exited with status ${status}")
endif()
string(REPLACE "\n" ";" lines "${output}")
foreach(line IN LISTS lines)
  if(line MATCHES "${MATCH}")
    return()
  endif()
endforeach()
message(FATAL_ERROR "no line of the output of '${COMMAND}' matches '${MATCH}'")

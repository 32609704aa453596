# cmake -DMODE=package|subdirectory -DDSX_SOURCE_DIR=<dsx source> -DDSX_BUILD_DIR=<dsx build tree>
#       -DWORK_DIR=<scratch folder> -DGENERATOR=<cmake generator> -DCXX_COMPILER=<c++ compiler>
#       -DEXPECT=<text> -P run_consumer.cmake
#
# Builds and runs the consumer project (tests/consumer) against dsx, and requires it to exit with
# status 0 and print EXPECT on a line of its own.
#   package:      installs the dsx build tree's development component to WORK_DIR/prefix, then
#                 find_package(dsx) with CMAKE_PREFIX_PATH=WORK_DIR/prefix;
#   subdirectory: add_subdirectory(DSX_SOURCE_DIR) from the consumer.
cmake_minimum_required(VERSION 3.25)
foreach(var IN ITEMS MODE DSX_SOURCE_DIR DSX_BUILD_DIR WORK_DIR GENERATOR CXX_COMPILER EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT status EQUAL 0)
    list(JOIN ARGV " " command)
    message(FATAL_ERROR "failed (status ${status}): ${command}\n${output}")
  endif()
  set(output "${output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(configure_args -S "${DSX_SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DDSX_CONSUMER_MODE=${MODE}")
if(MODE STREQUAL "package")
  run("${CMAKE_COMMAND}" --install "${DSX_BUILD_DIR}" --prefix "${WORK_DIR}/prefix" --component dsx_development)
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
elseif(MODE STREQUAL "subdirectory")
  list(APPEND configure_args "-DDSX_SOURCE_DIR=${DSX_SOURCE_DIR}")
else()
  message(FATAL_ERROR "MODE must be package or subdirectory, not '${MODE}'")
endif()
run("${CMAKE_COMMAND}" ${configure_args})
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
message("${output}")
string(REPLACE "\n" ";" lines "${output}")
if(NOT EXPECT IN_LIST lines)
  message(FATAL_ERROR "the consumer's output has no line '${EXPECT}'")
endif()

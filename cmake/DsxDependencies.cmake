# The packages dsx::dsx depends on, found the same way by the build (find_package) and by the installed
# dsxConfig.cmake (find_dependency, which forwards QUIET/REQUIRED and fails the consumer's find_package
# with the missing package's name). On Debian 12 they come from libopenblas-dev, the compiler's OpenMP,
# nlohmann-json3-dev, libfmt-dev, libboost-dev, libonig-dev and zlib1g-dev (see cmake/install-deps.sh).
# FindOniguruma.cmake sits beside this file (and beside the installed dsxConfig.cmake).
#
# dsx_find_dependencies() sets DSX_DEPENDENCY_TARGETS to the imported targets dsx::dsx links. It is a
# macro so that the result variables land in the caller's scope, and so that find_dependency's return()
# leaves dsxConfig.cmake when a package is missing. In dsx's own build the imported targets are GLOBAL:
# a parent project that add_subdirectory()s dsx and calls dsx_add_model() from its own directory
# compiles the config.json generator against them (try_compile resolves targets in the caller's scope).

macro(_dsx_find_package)
  if(DSX_FIND_AS_DEPENDENCY)
    find_dependency(${ARGV})
  else()
    find_package(${ARGV} REQUIRED GLOBAL)
  endif()
endmacro()

macro(dsx_find_dependencies)
  # BLAS with the CBLAS interface: OpenBLAS unless the user names another vendor (FindBLAS's BLA_VENDOR).
  if(NOT DEFINED BLA_VENDOR)
    set(BLA_VENDOR OpenBLAS)
  endif()
  # Prefer the OpenMP build of OpenBLAS (Debian: libopenblas-openmp-dev): its GEMM threads are then the
  # OpenMP threads dsx's own loops use. With the pthreads build the two pools compete for the cores —
  # measured on 2 cores (bench-small training step): 1499 tokens/s with the pthreads build, 3766 with the
  # OpenMP build. Executables get the folder as RPATH, since both builds share the soname.
  set(_dsx_openblas_openmp "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp")
  if(BLA_VENDOR STREQUAL "OpenBLAS" AND EXISTS "${_dsx_openblas_openmp}/libopenblas.so")
    list(PREPEND CMAKE_LIBRARY_PATH "${_dsx_openblas_openmp}")
  endif()
  _dsx_find_package(BLAS)
  if(NOT DSX_FIND_AS_DEPENDENCY)
    # Not every BLAS exports the C interface; dsx calls cblas_sgemm/cblas_dgemm from <cblas.h>.
    include(CheckSymbolExists)
    set(CMAKE_REQUIRED_LIBRARIES BLAS::BLAS)
    set(CMAKE_REQUIRED_QUIET ON)
    check_symbol_exists(cblas_sgemm "cblas.h" DSX_HAVE_CBLAS)
    unset(CMAKE_REQUIRED_LIBRARIES)
    unset(CMAKE_REQUIRED_QUIET)
    if(NOT DSX_HAVE_CBLAS)
      message(FATAL_ERROR "dsx: the BLAS found (BLA_VENDOR=${BLA_VENDOR}: ${BLAS_LIBRARIES}) does not provide "
                          "cblas_sgemm through <cblas.h>. Install libopenblas-dev, or set BLA_VENDOR to a BLAS "
                          "with the CBLAS interface.")
    endif()
  endif()
  _dsx_find_package(OpenMP COMPONENTS CXX)
  _dsx_find_package(nlohmann_json 3.10)
  _dsx_find_package(fmt 9)
  _dsx_find_package(Boost 1.74 CONFIG)  # headers only (Hana)
  # The tokenizer (data/tokenizer.hpp): Oniguruma for the pre-tokenizer patterns, zlib for .gz files.
  _dsx_find_package(Oniguruma 6)
  _dsx_find_package(ZLIB)

  set(DSX_DEPENDENCY_TARGETS BLAS::BLAS OpenMP::OpenMP_CXX nlohmann_json::nlohmann_json fmt::fmt Boost::headers
                             Oniguruma::onig ZLIB::ZLIB)
endmacro()

# NCCL ships with the CUDA toolkit on some installs and as libnccl-dev on others. Optional: sets
# DSX_NCCL_LIBRARY and DSX_NCCL_INCLUDE_DIR (cache) when both the library and nccl.h are found.
function(dsx_find_nccl)
  find_library(DSX_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} "${CUDAToolkit_LIBRARY_ROOT}/lib"
               DOC "NCCL library for dsx::cuda (optional)")
  find_path(DSX_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} DOC "Directory of nccl.h (optional)")
  if(DSX_NCCL_LIBRARY AND DSX_NCCL_INCLUDE_DIR)
    message(STATUS "dsx: NCCL found: ${DSX_NCCL_LIBRARY}")
  else()
    message(STATUS "dsx: NCCL not found; dsx::cuda is built without it")
    set(DSX_NCCL_LIBRARY "" PARENT_SCOPE)
  endif()
endfunction()

# Install rules: the headers, the exported targets (dsx::dsx, and dsx::cuda when DSX_CUDA) and the
# package files, so that a consumer writes
#   find_package(dsx CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE dsx::dsx)
# with CMAKE_PREFIX_PATH pointing at the install prefix. Everything here is in the component
# `dsx_development` (`cmake --install <build> --component dsx_development` needs nothing built).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DSX_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/dsx/cmake" CACHE STRING
    "Where dsxConfig.cmake is installed, relative to the prefix")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/dsx" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT dsx_development)

set(_dsx_export_targets dsx)
if(DSX_CUDA)
  list(APPEND _dsx_export_targets dsx_cuda)
endif()
install(TARGETS ${_dsx_export_targets} EXPORT dsxTargets COMPONENT dsx_development)
install(EXPORT dsxTargets NAMESPACE dsx:: DESTINATION "${DSX_INSTALL_CMAKEDIR}" COMPONENT dsx_development)

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/dsxConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/dsxConfig.cmake" INSTALL_DESTINATION "${DSX_INSTALL_CMAKEDIR}")
# Header-only: one package serves every architecture. Before 1.0 only the same minor version is compatible.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/dsxConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/dsxConfig.cmake" "${PROJECT_BINARY_DIR}/dsxConfigVersion.cmake"
              "${PROJECT_SOURCE_DIR}/cmake/DsxDependencies.cmake" "${PROJECT_SOURCE_DIR}/cmake/FindOniguruma.cmake"
        DESTINATION "${DSX_INSTALL_CMAKEDIR}" COMPONENT dsx_development)

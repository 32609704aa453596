# Finds Oniguruma, the regular-expression engine the HF tokenizers use (Debian: libonig-dev); dsx's
# byte-level BPE tokenizer compiles the pre-tokenizer patterns with it.
#
# Result: Oniguruma_FOUND, Oniguruma_VERSION, and the imported target Oniguruma::onig.
# Hints: Oniguruma_INCLUDE_DIR (folder of oniguruma.h) and Oniguruma_LIBRARY (the library file).
find_path(Oniguruma_INCLUDE_DIR oniguruma.h DOC "Folder of oniguruma.h")
find_library(Oniguruma_LIBRARY onig DOC "The Oniguruma library")

if(Oniguruma_INCLUDE_DIR AND EXISTS "${Oniguruma_INCLUDE_DIR}/oniguruma.h")
  file(STRINGS "${Oniguruma_INCLUDE_DIR}/oniguruma.h" version_lines
       REGEX "^#define ONIGURUMA_VERSION_(MAJOR|MINOR|TEENY) +[0-9]+")
  foreach(part IN ITEMS MAJOR MINOR TEENY)
    string(REGEX REPLACE ".*#define ONIGURUMA_VERSION_${part} +([0-9]+).*" "\\1" Oniguruma_VERSION_${part}
           "${version_lines}")
  endforeach()
  set(Oniguruma_VERSION "${Oniguruma_VERSION_MAJOR}.${Oniguruma_VERSION_MINOR}.${Oniguruma_VERSION_TEENY}")
  unset(version_lines)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Oniguruma REQUIRED_VARS Oniguruma_LIBRARY Oniguruma_INCLUDE_DIR
                                  VERSION_VAR Oniguruma_VERSION)
if(Oniguruma_FOUND AND NOT TARGET Oniguruma::onig)
  add_library(Oniguruma::onig UNKNOWN IMPORTED)
  set_target_properties(Oniguruma::onig PROPERTIES IMPORTED_LOCATION "${Oniguruma_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${Oniguruma_INCLUDE_DIR}")
endif()
mark_as_advanced(Oniguruma_INCLUDE_DIR Oniguruma_LIBRARY)

# Run at build time (not configure time) so the git revision in checkpoint provenance is the
# one actually built. Rewrites the header only when its content changes.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE UPCYCLE_GIT_REVISION OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET RESULT_VARIABLE git_status)
if(NOT git_status EQUAL 0 OR NOT UPCYCLE_GIT_REVISION)
  set(UPCYCLE_GIT_REVISION "unknown")
else()
  execute_process(COMMAND git status --porcelain --untracked-files=no
                  WORKING_DIRECTORY ${SOURCE_DIR} OUTPUT_VARIABLE dirty ERROR_QUIET)
  if(dirty)
    string(APPEND UPCYCLE_GIT_REVISION "-dirty")
  endif()
endif()
configure_file(${INPUT} ${OUTPUT}.tmp @ONLY)
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUTPUT}.tmp ${OUTPUT})
file(REMOVE ${OUTPUT}.tmp)

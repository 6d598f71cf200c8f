# Docs that compile: every ```cpp / ```c++ / ```cuda block of README.md and docs/*.md becomes a
# translation unit of the docs tests, so a block that stops compiling fails the test build.
#
#   include(docs/doc_blocks.cmake)
#   kvcar_doc_blocks(test_docs test_docs_gpu)   # after both targets exist (the second may not)
#
# A block is either a complete program (it is compiled as it stands; its `int main()` becomes a
# function that a Catch2 test calls, so README's program also runs) or a fragment, marked by an
# HTML comment right before its fence that gives what the fragment needs, the wrapping function's
# head; the block becomes that function's body:
#
#   <!-- doc-test: fragment
#   #include <kvcar/kvcar.hpp>
#   void use(const kvcar::kv_geometry& model_geometry)
#   -->
#   ```cpp
#   ...
#
# `#include` lines (the block's and the marker's) go first; the rest is wrapped in a namespace
# of its own, so blocks cannot clash. `#line` points compiler messages at the doc's own lines.
# Extraction runs when CMake configures, and editing a doc re-runs it (CMAKE_CONFIGURE_DEPENDS);
# no Python is needed. Shell, CMake, JSON and unlabelled blocks are left alone.

# Writes `content` to `path` only when it differs, so an unchanged block is not rebuilt.
function(_kvcar_write_if_changed path content)
  if(EXISTS "${path}")
    file(READ "${path}" old)
    if(old STREQUAL content)
      return()
    endif()
  endif()
  file(WRITE "${path}" "${content}")
endfunction()

# 1-based line number of character offset `offset` in `text`.
function(_kvcar_line_of text offset out)
  string(SUBSTRING "${text}" 0 ${offset} head)
  string(REGEX MATCHALL "\n" newlines "${head}")
  list(LENGTH newlines n)
  math(EXPR n "${n} + 1")
  set(${out} ${n} PARENT_SCOPE)
endfunction()

# Splits C++ text into its #include lines (`includes`) and the rest (`rest`), keeping line
# structure: each part is preceded by #line directives so messages name the doc's lines.
# Works on the text with string(FIND): C++ is full of ';' and '[', which CMake lists mangle.
function(_kvcar_split_includes text doc first_line out_includes out_rest)
  set(includes "")
  set(rest "#line ${first_line} \"${doc}\"\n")
  set(line_no ${first_line})
  set(pending_line TRUE)
  while(NOT text STREQUAL "")
    string(FIND "${text}" "\n" nl)
    if(nl EQUAL -1)
      set(line "${text}")
      set(text "")
    else()
      string(SUBSTRING "${text}" 0 ${nl} line)
      math(EXPR next "${nl} + 1")
      string(SUBSTRING "${text}" ${next} -1 text)
    endif()
    if(line MATCHES "^[ \t]*#[ \t]*include")
      string(APPEND includes "#line ${line_no} \"${doc}\"\n${line}\n")
      set(pending_line TRUE)
    else()
      if(pending_line)
        string(APPEND rest "#line ${line_no} \"${doc}\"\n")
        set(pending_line FALSE)
      endif()
      string(APPEND rest "${line}\n")
    endif()
    math(EXPR line_no "${line_no} + 1")
  endwhile()
  set(${out_includes} "${includes}" PARENT_SCOPE)
  set(${out_rest} "${rest}" PARENT_SCOPE)
endfunction()

# Extracts the blocks of `docs` (absolute paths) into `out_dir`. Sets, in the caller:
#   KVCAR_DOC_CPP_SOURCES, KVCAR_DOC_CUDA_SOURCES  generated files
#   KVCAR_DOC_BLOCK_COUNT                          blocks found, all languages
function(kvcar_extract_doc_blocks out_dir root)
  set(cpp_sources "")
  set(cuda_sources "")
  set(fragments "")
  set(count 0)
  file(MAKE_DIRECTORY "${out_dir}")
  foreach(doc IN LISTS ARGN)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${doc}")
    file(RELATIVE_PATH rel "${root}" "${doc}")
    string(MAKE_C_IDENTIFIER "${rel}" doc_id)
    file(READ "${doc}" all)
    set(all "\n${all}")  # every fence now follows a newline, the first one too
    set(offset 0)        # where `rest` starts in `all`
    set(rest "${all}")
    set(index 0)
    while(TRUE)
      string(FIND "${rest}" "\n```" open)
      if(open EQUAL -1)
        break()
      endif()
      math(EXPR info_at "${open} + 4")
      string(SUBSTRING "${rest}" ${info_at} -1 after_open)
      string(FIND "${after_open}" "\n" info_end)
      string(SUBSTRING "${after_open}" 0 ${info_end} info)
      string(STRIP "${info}" info)
      math(EXPR body_at "${info_end} + 1")
      string(SUBSTRING "${after_open}" ${body_at} -1 after_info)
      string(FIND "\n${after_info}" "\n```" close)  # the body may be empty
      if(close EQUAL -1)
        message(FATAL_ERROR "${rel}: a ``` block is never closed")
      endif()
      if(close EQUAL 0)
        set(body "")
      else()
        math(EXPR body_len "${close} - 1")
        string(SUBSTRING "${after_info}" 0 ${body_len} body)
      endif()
      # Where the body starts (line numbers) and where the next search starts.
      math(EXPR body_offset "${offset} + ${info_at} + ${body_at}")
      string(SUBSTRING "${after_info}" ${close} -1 tail)  # from the closing fence on
      string(FIND "${tail}" "\n" tail_nl)
      if(tail_nl EQUAL -1)
        set(tail "")
      else()
        string(SUBSTRING "${tail}" ${tail_nl} -1 tail)  # keep the newline: a fence may follow
      endif()
      string(LENGTH "${rest}" rest_len)
      string(LENGTH "${tail}" tail_len)
      set(before_offset ${offset})  # where `before` starts in `all`
      math(EXPR offset "${offset} + ${rest_len} - ${tail_len}")
      string(SUBSTRING "${rest}" 0 ${open} before)
      set(rest "${tail}")

      string(TOLOWER "${info}" lang)
      if(lang STREQUAL "cpp" OR lang STREQUAL "c++")
        set(ext cpp)
      elseif(lang STREQUAL "cuda" OR lang STREQUAL "cu")
        set(ext cu)
      else()
        continue()
      endif()
      math(EXPR index "${index} + 1")
      math(EXPR count "${count} + 1")
      _kvcar_line_of("${all}" ${body_offset} body_line)
      math(EXPR body_line "${body_line} - 1")  # `all` starts with an added newline
      set(id "${doc_id}_${index}")

      # A fragment marker: the last thing before the fence is <!-- doc-test: fragment ... -->.
      set(prelude "")
      set(prelude_line 0)
      string(REGEX MATCH "<!--[ \t]*doc-test:[ \t]*fragment[^\n]*\n(([^-]|-[^-]|--[^>])*)-->[ \t\n]*$"
             marker "${before}")
      if(marker)
        set(prelude "${CMAKE_MATCH_1}")
        string(LENGTH "${before}" before_len)
        string(LENGTH "${marker}" marker_len)
        math(EXPR marker_at "${before_offset} + ${before_len} - ${marker_len}")
        _kvcar_line_of("${all}" ${marker_at} prelude_line)
        # prelude starts one line after the marker's first line; minus the added newline: +0
      elseif(before MATCHES "doc-test:[^\n]*\n?[ \t\n]*$")
        message(FATAL_ERROR "${rel}:${body_line}: a doc-test marker before this block is not "
                            "`<!-- doc-test: fragment` followed by the function head and `-->`")
      endif()

      _kvcar_split_includes("${body}" "${doc}" ${body_line} body_includes body_rest)
      set(main_call "")
      if(marker)
        _kvcar_split_includes("${prelude}" "${doc}" ${prelude_line} pre_includes pre_rest)
        set(code "${pre_includes}${body_includes}namespace kvcar_doc_${id} {\n${pre_rest}{\n${body_rest}}\n}  // namespace kvcar_doc_${id}\n")
      else()
        if(NOT body MATCHES "int main\\(")
          message(FATAL_ERROR "${rel}:${body_line}: this ```${info} block has no `int main()` "
                              "and no `<!-- doc-test: fragment ... -->` marker before it: make it "
                              "a complete program or mark it as a fragment with its inputs")
        endif()
        set(code "${body_includes}namespace kvcar_doc_${id} {\n${body_rest}}  // namespace kvcar_doc_${id}\n")
        set(main_call "\n#include \"catch.hpp\"\nTEST_CASE(\"docs: the program at ${rel}:${body_line} runs and returns 0\", \"[docs]\") {\n    REQUIRE(kvcar_doc_${id}::main() == 0);\n}\n")
      endif()
      set(file "${out_dir}/${id}.${ext}")
      if(marker)
        list(APPEND fragments "${file}")
      endif()
      _kvcar_write_if_changed("${file}"
        "// Generated by tests/docs/doc_blocks.cmake from ${rel}:${body_line}: edit the doc, not this file.\n${code}${main_call}")
      if(ext STREQUAL "cpp")
        list(APPEND cpp_sources "${file}")
      else()
        list(APPEND cuda_sources "${file}")
      endif()
    endwhile()
  endforeach()
  set(KVCAR_DOC_CPP_SOURCES "${cpp_sources}" PARENT_SCOPE)
  set(KVCAR_DOC_CUDA_SOURCES "${cuda_sources}" PARENT_SCOPE)
  set(KVCAR_DOC_BLOCK_COUNT ${count} PARENT_SCOPE)
  set(KVCAR_DOC_FRAGMENT_SOURCES "${fragments}" PARENT_SCOPE)
endfunction()

# Adds the blocks of README.md and docs/*.md to the docs test executables: C++ blocks to
# `cpu_target`, CUDA blocks to `gpu_target` when that target exists (CUDA on). The CPU target
# also learns how many blocks there are (KVCAR_DOC_BLOCK_COUNT), which tests/docs/blocks.cpp
# checks against its own count of the docs' fences.
function(kvcar_doc_blocks cpu_target gpu_target)
  file(GLOB docs CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/docs/*.md")
  list(PREPEND docs "${PROJECT_SOURCE_DIR}/README.md")
  kvcar_extract_doc_blocks("${CMAKE_CURRENT_BINARY_DIR}/doc_blocks" "${PROJECT_SOURCE_DIR}" ${docs})
  target_sources(${cpu_target} PRIVATE ${KVCAR_DOC_CPP_SOURCES})
  target_compile_definitions(${cpu_target} PRIVATE KVCAR_DOC_BLOCK_COUNT=${KVCAR_DOC_BLOCK_COUNT})
  # A doc program that forgets `return 0` would fall off the end of a function now, not main.
  target_compile_options(${cpu_target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror=return-type>)
  if(KVCAR_HAS_CUDA AND KVCAR_DOC_CUDA_SOURCES AND NOT TARGET ${gpu_target})
    message(FATAL_ERROR "kvcar_doc_blocks: CUDA is on but there is no target ${gpu_target} for "
                        "the docs' CUDA blocks")
  endif()
  if(TARGET ${gpu_target})
    target_sources(${gpu_target} PRIVATE ${KVCAR_DOC_CUDA_SOURCES})
    target_compile_options(${gpu_target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror=return-type>)
  endif()
  # A fragment shows a few calls: what it computes or takes may go unused.
  set(targets ${cpu_target})
  if(TARGET ${gpu_target})
    list(APPEND targets ${gpu_target})
  endif()
  set_source_files_properties(${KVCAR_DOC_FRAGMENT_SOURCES} TARGET_DIRECTORY ${targets}
    PROPERTIES COMPILE_OPTIONS
    "$<$<COMPILE_LANGUAGE:CXX>:-Wno-unused-variable;-Wno-unused-but-set-variable;-Wno-unused-parameter>;$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wno-unused-variable,-Wno-unused-but-set-variable,-Wno-unused-parameter;-diag-suppress=177>")
  message(STATUS "kvcar: ${KVCAR_DOC_BLOCK_COUNT} code blocks of the docs compile as tests")
endfunction()

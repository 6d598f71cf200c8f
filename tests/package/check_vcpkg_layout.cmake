# cmake -P script: the vcpkg port (ports/kvcar) cannot be run here (no vcpkg tool), so this checks
# the assumptions its portfile makes about kvcar's install, with the portfile itself as the
# source of truth: the configure OPTIONS, the CONFIG_PATH of vcpkg_cmake_config_fixup, the
# folders it removes and the file it installs as copyright are all parsed from portfile.cmake.
# Then the project is configured with those options and installed into a prefix, and:
#   1. the prefix holds exactly include/kvcar/** (as in the source tree), CONFIG_PATH's
#      kvcarConfig.cmake, kvcarConfigVersion.cmake and kvcarTargets.cmake, and what the portfile
#      removes — nothing else (no lib/, no bin/, no stray config);
#   2. the config files find their prefix by walking up exactly CONFIG_PATH's depth (the pattern
#      vcpkg_cmake_config_fixup rewrites) and hold no absolute path into the build;
#   3. after a simulated fixup (config moved to share/kvcar, prefix walks rewritten as vcpkg
#      does) a consumer's find_package(kvcar) gives kvcar::kvcar with the prefix's include/;
#   4. vcpkg.json's name, version (== project(VERSION)) and license, and the usage file, agree.
# Inputs: SOURCE_DIR (repository root), PORT_DIR (ports/kvcar), WORK_DIR (scratch).
cmake_minimum_required(VERSION 3.25)

foreach(v SOURCE_DIR PORT_DIR WORK_DIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "check_vcpkg_layout: pass -D${v}=...")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
set(failures "")
# expect("<if() condition>" "what is wrong"): collects every failure, so one run names them all.
function(expect condition what)
  cmake_language(EVAL CODE "if(${condition})\nset(ok TRUE)\nelse()\nset(ok FALSE)\nendif()")
  if(NOT ok)
    set(failures "${failures}  - ${what}\n" PARENT_SCOPE)
  endif()
endfunction()

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "check_vcpkg_layout: step failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

# --- 0. What the portfile says ---
file(READ ${PORT_DIR}/portfile.cmake portfile)
string(REGEX REPLACE "#[^\n]*" "" portfile "${portfile}")  # comments may mention anything

string(REGEX MATCH "vcpkg_cmake_configure\\(([^)]*)\\)" _ "${portfile}")
set(configure_args "${CMAKE_MATCH_1}")
if(configure_args STREQUAL "")
  message(FATAL_ERROR "check_vcpkg_layout: no vcpkg_cmake_configure(...) in portfile.cmake")
endif()
string(REGEX MATCHALL "-D[A-Za-z0-9_]+(:[A-Z]+)?=[^ \t\r\n\"]*" port_options "${configure_args}")
expect("NOT port_options STREQUAL \"\"" "portfile passes no -D options to vcpkg_cmake_configure")

string(REGEX MATCH "vcpkg_cmake_config_fixup\\([^)]*CONFIG_PATH[ \t\r\n]+\"?([^ \t\r\n\")]+)" _
       "${portfile}")
set(config_path "${CMAKE_MATCH_1}")
if(config_path STREQUAL "")
  message(FATAL_ERROR "check_vcpkg_layout: no vcpkg_cmake_config_fixup(CONFIG_PATH ...) found")
endif()

# Folders the portfile removes from the package: file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/x").
set(removed "")
string(REGEX MATCHALL "file\\(REMOVE_RECURSE[^)]*\\)" remove_calls "${portfile}")
foreach(call IN LISTS remove_calls)
  string(REGEX MATCHALL "\\\$\\{CURRENT_PACKAGES_DIR\\}/[^ \t\r\n\")]+" paths "${call}")
  foreach(p IN LISTS paths)
    string(REPLACE "\${CURRENT_PACKAGES_DIR}/" "" p "${p}")
    list(APPEND removed "${p}")
  endforeach()
endforeach()

string(REGEX MATCH "vcpkg_install_copyright\\([^)]*FILE_LIST[ \t\r\n]+\"?\\\$\\{SOURCE_PATH\\}/([^ \t\r\n\")]+)"
       _ "${portfile}")
set(copyright "${CMAKE_MATCH_1}")
expect("NOT copyright STREQUAL \"\"" "portfile has no vcpkg_install_copyright(FILE_LIST \"\${SOURCE_PATH}/...\")")
if(NOT copyright STREQUAL "")
  expect("EXISTS \"${SOURCE_DIR}/${copyright}\"" "copyright file ${copyright} is not in the source tree")
endif()
expect("portfile MATCHES \"SOURCE_PATH[^\\n]*CURRENT_PORT_DIR[^\\n]*/\\\\.\\\\./\\\\.\\\\.\""
       "SOURCE_PATH is not the tree two levels above the port (an overlay port of this checkout)")
expect("EXISTS \"${PORT_DIR}/../../CMakeLists.txt\"" "the port is not at <root>/ports/kvcar")

# --- 1. Configure with the port's options, install, compare the file list ---
set(build ${WORK_DIR}/build)
set(prefix ${WORK_DIR}/prefix)
run_step(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${build} -DCMAKE_BUILD_TYPE=Release ${port_options})
run_step(${CMAKE_COMMAND} --install ${build} --prefix ${prefix})

file(GLOB_RECURSE installed LIST_DIRECTORIES false RELATIVE ${prefix} ${prefix}/*)
file(GLOB_RECURSE headers LIST_DIRECTORIES false RELATIVE ${SOURCE_DIR} ${SOURCE_DIR}/include/kvcar/*)
set(expected ${headers})
foreach(f kvcarConfig.cmake kvcarConfigVersion.cmake kvcarTargets.cmake)
  list(APPEND expected "${config_path}/${f}")
endforeach()

set(unexpected "")
foreach(f IN LISTS installed)
  list(FIND expected "${f}" at)
  if(at GREATER_EQUAL 0)
    continue()
  endif()
  set(is_removed FALSE)
  foreach(r IN LISTS removed)
    string(FIND "${f}" "${r}/" pos)
    if(pos EQUAL 0 OR f STREQUAL r)
      set(is_removed TRUE)
    endif()
  endforeach()
  if(NOT is_removed)
    list(APPEND unexpected "${f}")
  endif()
endforeach()
set(missing "")
foreach(f IN LISTS expected)
  list(FIND installed "${f}" at)
  if(at LESS 0)
    list(APPEND missing "${f}")
  endif()
endforeach()
list(JOIN unexpected ", " unexpected_text)
list(JOIN missing ", " missing_text)
expect("unexpected STREQUAL \"\"" "installed but neither expected by the port nor removed by it: ${unexpected_text}")
expect("missing STREQUAL \"\"" "expected by the port but not installed: ${missing_text}")

# --- 2. The config files walk up exactly CONFIG_PATH's depth; no absolute build paths ---
string(REPLACE "/" ";" config_parts "${config_path}")
list(LENGTH config_parts depth)
set(targets_file ${prefix}/${config_path}/kvcarTargets.cmake)
set(config_file ${prefix}/${config_path}/kvcarConfig.cmake)
if(EXISTS ${targets_file} AND EXISTS ${config_file})
  file(READ ${targets_file} targets_text)
  string(REGEX MATCHALL "get_filename_component\\(_IMPORT_PREFIX \"\\\$\\{_IMPORT_PREFIX\\}\" PATH\\)"
         ups "${targets_text}")
  list(LENGTH ups n_ups)
  expect("n_ups EQUAL depth" "kvcarTargets.cmake walks up ${n_ups} folders, CONFIG_PATH ${config_path} is ${depth} deep")
  expect("targets_text MATCHES \"add_library\\\\(kvcar::kvcar INTERFACE IMPORTED\\\\)\""
         "kvcarTargets.cmake does not define kvcar::kvcar")

  file(READ ${config_file} config_text)
  string(REGEX MATCH "PACKAGE_PREFIX_DIR \"\\\$\\{CMAKE_CURRENT_LIST_DIR\\}/((\\.\\./)*)\" ABSOLUTE"
         _ "${config_text}")
  string(LENGTH "${CMAKE_MATCH_1}" dots)
  math(EXPR n_dirs "${dots} / 3")
  expect("n_dirs EQUAL depth" "kvcarConfig.cmake's PACKAGE_PREFIX_DIR walks up ${n_dirs} folders, CONFIG_PATH is ${depth} deep")

  file(GLOB cmake_files ${prefix}/${config_path}/*.cmake)
  foreach(f IN LISTS cmake_files)
    file(READ ${f} text)
    foreach(p "${WORK_DIR}" "${SOURCE_DIR}")
      string(FIND "${text}" "${p}" pos)
      get_filename_component(name ${f} NAME)
      expect("pos EQUAL -1" "${name} holds the absolute path ${p}; vcpkg rejects non-relocatable configs")
    endforeach()
  endforeach()
endif()

# --- 3. Simulated fixup, then find_package from a consumer (only if the layout is right) ---
if(failures STREQUAL "")
  set(fixed ${WORK_DIR}/fixed)
  file(COPY ${prefix}/include DESTINATION ${fixed})
  file(MAKE_DIRECTORY ${fixed}/share/kvcar)
  foreach(f IN LISTS cmake_files)
    file(READ ${f} text)
    string(REGEX REPLACE
      "get_filename_component\\(_IMPORT_PREFIX \"\\\$\\{CMAKE_CURRENT_LIST_FILE\\}\" PATH\\)(\r?\nget_filename_component\\(_IMPORT_PREFIX \"\\\$\\{_IMPORT_PREFIX\\}\" PATH\\))*"
      "get_filename_component(_IMPORT_PREFIX \"\${CMAKE_CURRENT_LIST_FILE}\" PATH)\nget_filename_component(_IMPORT_PREFIX \"\${_IMPORT_PREFIX}\" PATH)\nget_filename_component(_IMPORT_PREFIX \"\${_IMPORT_PREFIX}\" PATH)"
      text "${text}")
    string(REGEX REPLACE "PACKAGE_PREFIX_DIR \"\\\$\\{CMAKE_CURRENT_LIST_DIR\\}/(\\.\\./)*\""
           "PACKAGE_PREFIX_DIR \"\${CMAKE_CURRENT_LIST_DIR}/../../\"" text "${text}")
    get_filename_component(name ${f} NAME)
    file(WRITE ${fixed}/share/kvcar/${name} "${text}")
  endforeach()
  set(consumer ${WORK_DIR}/consumer)
  file(WRITE ${consumer}/CMakeLists.txt [=[
cmake_minimum_required(VERSION 3.25)
project(kvcar_vcpkg_consumer LANGUAGES CXX)  # kvcar's config looks up Threads, which needs it
find_package(kvcar CONFIG REQUIRED)
if(NOT TARGET kvcar::kvcar)
  message(FATAL_ERROR "find_package(kvcar) gave no kvcar::kvcar")
endif()
get_target_property(dirs kvcar::kvcar INTERFACE_INCLUDE_DIRECTORIES)
file(REAL_PATH "${CMAKE_PREFIX_PATH}/include" want)
foreach(d IN LISTS dirs)
  file(REAL_PATH "${d}" got)
  if(NOT got STREQUAL want)
    message(FATAL_ERROR "kvcar::kvcar include directory ${d}, expected ${want}")
  endif()
endforeach()
if(NOT EXISTS "${want}/kvcar/kvcar.hpp")
  message(FATAL_ERROR "no kvcar/kvcar.hpp under ${want}")
endif()
]=])
  run_step(${CMAKE_COMMAND} -S ${consumer} -B ${consumer}/build -DCMAKE_PREFIX_PATH=${fixed}
           -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON)
endif()

# --- 4. vcpkg.json and usage ---
file(READ ${PORT_DIR}/vcpkg.json manifest)
file(READ ${SOURCE_DIR}/CMakeLists.txt top)
string(REGEX MATCH "project\\(kvcar[ \t\r\n]+VERSION[ \t\r\n]+([0-9.]+)" _ "${top}")
set(project_version "${CMAKE_MATCH_1}")
string(JSON port_name ERROR_VARIABLE json_error GET "${manifest}" name)
expect("json_error STREQUAL \"NOTFOUND\"" "vcpkg.json: ${json_error}")
string(JSON port_version ERROR_VARIABLE json_error GET "${manifest}" version)
string(JSON port_license ERROR_VARIABLE json_error GET "${manifest}" license)
expect("port_name STREQUAL \"kvcar\"" "vcpkg.json name is '${port_name}', not 'kvcar'")
expect("port_version STREQUAL project_version"
       "vcpkg.json version '${port_version}' != project(kvcar VERSION ${project_version})")
expect("port_license STREQUAL \"Apache-2.0\"" "vcpkg.json license is '${port_license}'")
set(host_deps "")
string(JSON n_deps ERROR_VARIABLE json_error LENGTH "${manifest}" dependencies)
if(json_error STREQUAL "NOTFOUND")
  math(EXPR last "${n_deps} - 1")
  foreach(i RANGE ${last})
    string(JSON dep_name GET "${manifest}" dependencies ${i} name)
    string(JSON dep_host ERROR_VARIABLE e GET "${manifest}" dependencies ${i} host)
    if(dep_host)
      list(APPEND host_deps ${dep_name})
    endif()
  endforeach()
endif()
list(SORT host_deps)
expect("host_deps STREQUAL \"vcpkg-cmake;vcpkg-cmake-config\""
       "vcpkg.json host dependencies are '${host_deps}', expected vcpkg-cmake;vcpkg-cmake-config")
file(READ ${PORT_DIR}/usage usage)
expect("usage MATCHES \"find_package\\\\(kvcar CONFIG REQUIRED\\\\)\" AND usage MATCHES \"kvcar::kvcar\""
       "usage does not show find_package(kvcar CONFIG REQUIRED) and kvcar::kvcar")

if(NOT failures STREQUAL "")
  message(FATAL_ERROR "check_vcpkg_layout: ports/kvcar and kvcar's install disagree:\n${failures}")
endif()
list(LENGTH installed n_installed)
message(STATUS "check_vcpkg_layout: ok (${n_installed} files installed, CONFIG_PATH ${config_path}, options ${port_options})")

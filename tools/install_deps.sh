#!/usr/bin/env bash
# What kvcar's tests need on the machine: cmake (>= 3.25), a C++20 compiler (g++) and Catch2
# (2.13 or 3.x). Installs the missing ones with apt on Debian and Ubuntu (through sudo when not
# root); prints nothing and changes nothing when all are there; elsewhere says what to install
# and exits 1. The CUDA toolkit is optional (GPU tests, examples' CUDA backend) and never
# installed here.
#
#   bash tools/install_deps.sh
set -euo pipefail

have_catch2() {
    local d
    for d in /usr/include /usr/local/include ${CPATH:+${CPATH//:/ }}; do
        [ -f "$d/catch2/catch.hpp" ] || [ -f "$d/catch2/catch_test_macros.hpp" ] && return 0
    done
    return 1
}

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || need+=(g++)
have_catch2 || need+=(catch2)
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || ! grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release 2>/dev/null; then
    echo "install_deps.sh: missing ${need[*]}; this script installs them only on Debian/Ubuntu (apt)." >&2
    echo "Install them with your package manager (Catch2 2.13 or 3.x, CMake >= 3.25, a C++20 compiler), then run the command again." >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install_deps.sh: missing ${need[*]}, and neither root nor sudo to apt-get install them" >&2; exit 1; }
    sudo=sudo
fi
echo "install_deps.sh: installing ${need[*]} with apt-get" >&2
$sudo apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null

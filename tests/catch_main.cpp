// Catch2 2.13 has no separate main library; Catch2 3 links Catch2WithMain instead of this file.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

// kvcar/kvcar.hpp — everything host code needs, in one include.
#pragma once

#include "kvcar/common.hpp"
#include "kvcar/concepts.hpp"
#include "kvcar/numeric.hpp"
#include "kvcar/codec/identity.hpp"

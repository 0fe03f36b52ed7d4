#pragma once
// The CPU backend's choices that every command running a model offers the same way.
#include <CLI/CLI.hpp>

#include "kernels/cpu/cpu_backend.h"

namespace nibble::cli {

void add_int8_activations_flag(CLI::App* command, bool& int8_activations);
// Warns when int8 activations are asked for on a CPU without the integer kernels.
kernels::CpuBackendOptions cpu_backend_options(int threads, bool int8_activations);

}  // namespace nibble::cli

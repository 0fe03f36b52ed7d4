#pragma once
// The backend choices that every command running a model offers the same way:
// --device, and the CPU backend's threads and int8 activations.
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "kernels/backend_factory.h"

namespace nibble::cli {

void add_int8_activations_flag(CLI::App* command, bool& int8_activations);
void add_device_flag(CLI::App* command, std::string& device);
// Warns when int8 activations are asked for on a CPU without the integer kernels.
kernels::CpuBackendOptions cpu_backend_options(int threads, bool int8_activations);
// The backend for `device` ("cpu", "cuda", "cuda:N"); throws DeviceUnavailable
// (exit code 2) when it cannot run here, before anything is loaded.
std::unique_ptr<kernels::Backend> make_backend(const std::string& device, int threads, bool int8_activations);

}  // namespace nibble::cli

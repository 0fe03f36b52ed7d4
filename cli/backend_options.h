#pragma once
// The backend choices that every command running a model offers the same way:
// --device, and the CPU backend's threads and int8 activations.
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "kernels/backend_factory.h"

namespace nibble::cli {

// How the CPU backend multiplies quantized weights: by default on int8-rounded
// activations where the CPU has the integer kernels (AVX-512 VNNI), which is
// what makes prompts and batches fast (docs/perf/2026-12-07-int8-default.md has
// the speed and the accuracy cost); --float-activations keeps float32.
struct ActivationFlags {
  bool int8 = false;    // --int8-activations: asked for explicitly (warns where unavailable)
  bool floats = false;  // --float-activations
  bool use_int8() const;
};

void add_activation_flags(CLI::App* command, ActivationFlags& flags);
void add_device_flag(CLI::App* command, std::string& device);
// Warns when int8 activations are asked for on a CPU without the integer kernels.
kernels::CpuBackendOptions cpu_backend_options(int threads, const ActivationFlags& activations);
// The backend for `device` ("cpu", "cuda", "cuda:N"); throws DeviceUnavailable
// (exit code 2) when it cannot run here, before anything is loaded.
std::unique_ptr<kernels::Backend> make_backend(const std::string& device, int threads,
                                               const ActivationFlags& activations);

}  // namespace nibble::cli

#include "cli/backend_options.h"

#include <spdlog/spdlog.h>

namespace nibble::cli {

void add_int8_activations_flag(CLI::App* command, bool& int8_activations) {
  command->add_flag("--int8-activations", int8_activations,
                    "Round activations to int8 for quantized layers and use integer dot products (AVX-512 VNNI): "
                    "several times faster for batches and prompts, logits within ~1% of float");
}

void add_device_flag(CLI::App* command, std::string& device) {
  command->add_option("--device", device, "Where the model runs: cpu, cuda (GPU 0) or cuda:N")->capture_default_str();
}

std::unique_ptr<kernels::Backend> make_backend(const std::string& device, int threads, bool int8_activations) {
  const kernels::Device parsed = kernels::parse_device(device);
  if (parsed.kind != kernels::DeviceKind::Cpu) {
    if (int8_activations) spdlog::warn("int8_activations_ignored reason=\"a CPU backend option\" device={}", parsed.name());
    return kernels::make_backend({parsed, {}});
  }
  return kernels::make_backend({parsed, cpu_backend_options(threads, int8_activations)});
}

kernels::CpuBackendOptions cpu_backend_options(int threads, bool int8_activations) {
  if (int8_activations && !kernels::CpuBackend::int8_activations_supported()) {
    spdlog::warn("int8_activations_unavailable reason=\"this CPU has no AVX-512 VNNI\" using=float32");
  }
  return kernels::CpuBackendOptions{threads, int8_activations};
}

}  // namespace nibble::cli

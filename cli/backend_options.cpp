#include "cli/backend_options.h"

#include <spdlog/spdlog.h>

#include "kernels/cpu/cpu_backend.h"

namespace nibble::cli {

bool ActivationFlags::use_int8() const { return !floats && kernels::CpuBackend::int8_activations_supported(); }

void add_activation_flags(CLI::App* command, ActivationFlags& flags) {
  auto* int8 = command->add_flag("--int8-activations", flags.int8,
                                 "Round activations to int8 for quantized layers and use integer dot products "
                                 "(AVX-512 VNNI); the default where the CPU has them");
  command
      ->add_flag("--float-activations", flags.floats,
                 "Multiply quantized layers by float32 activations instead of int8-rounded ones: slower, "
                 "and the logits are those of the dequantized weights exactly")
      ->excludes(int8);
}

void add_device_flag(CLI::App* command, std::string& device) {
  command->add_option("--device", device, "Where the model runs: cpu, cuda (GPU 0) or cuda:N")->capture_default_str();
}

std::unique_ptr<kernels::Backend> make_backend(const std::string& device, int threads,
                                               const ActivationFlags& activations) {
  const kernels::Device parsed = kernels::parse_device(device);
  if (parsed.kind != kernels::DeviceKind::Cpu) {
    if (activations.int8) {
      spdlog::warn("int8_activations_ignored reason=\"a CPU backend option\" device={}", parsed.name());
    }
    return kernels::make_backend({parsed, {}});
  }
  return kernels::make_backend({parsed, cpu_backend_options(threads, activations)});
}

kernels::CpuBackendOptions cpu_backend_options(int threads, const ActivationFlags& activations) {
  if (activations.int8 && !kernels::CpuBackend::int8_activations_supported()) {
    spdlog::warn("int8_activations_unavailable reason=\"this CPU has no AVX-512 VNNI\" using=float32");
  }
  return kernels::CpuBackendOptions{threads, activations.use_int8()};
}

}  // namespace nibble::cli

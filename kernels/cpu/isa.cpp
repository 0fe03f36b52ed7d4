#include "kernels/cpu/isa.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "common/error.h"

namespace nibble::kernels::cpu {
namespace {

Isa isa_from_environment() {
  const Isa best = best_supported_isa();
  const char* requested = std::getenv("NIBBLE_CPU_ISA");
  if (requested == nullptr || *requested == '\0') return best;
  const std::string name(requested);
  for (const Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (isa_name(isa) == name) {
      if (!isa_supported(isa)) fail("NIBBLE_CPU_ISA={} is not supported by this CPU", name);
      return isa;
    }
  }
  fail("NIBBLE_CPU_ISA={} is unknown (scalar, avx2, avx512)", name);
}

// CPUID leaf 1, ECX bit 29. Asked directly because clang 14 (the fuzz build's
// compiler) knows no "f16c" name for __builtin_cpu_supports.
bool has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{isa_from_environment()};
  return isa;
}

}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

Isa best_supported_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return "scalar";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "unknown";
}

Isa active_isa() { return active().load(std::memory_order_relaxed); }

void set_active_isa(Isa isa) {
  if (!isa_supported(isa)) fail("CPU ISA {} is not supported by this CPU", isa_name(isa));
  active().store(isa, std::memory_order_relaxed);
}

}  // namespace nibble::kernels::cpu

#pragma once
// Which x86 vector extensions the CPU kernels use, picked at run time by CPUID so
// one binary runs on every x86-64 and uses AVX-512 where it exists.
#include <string_view>

namespace nibble::kernels::cpu {

enum class Isa { Scalar, Avx2, Avx512 };

Isa best_supported_isa();
bool isa_supported(Isa isa);
std::string_view isa_name(Isa isa);
// The ISA kernels use now: the best supported one, unless NIBBLE_CPU_ISA
// (scalar|avx2|avx512) or set_active_isa() asked for a lower one.
Isa active_isa();
// For tests and benchmarks that compare variants; throws when unsupported here.
void set_active_isa(Isa isa);

}  // namespace nibble::kernels::cpu

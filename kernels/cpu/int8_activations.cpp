#include "kernels/cpu/int8_activations.h"

#include "common/error.h"

namespace nibble::kernels::cpu {

std::int64_t activation_blocks(const QuantLayout& w) {
  std::int64_t blocks = 0;
  for (std::int64_t g = 0; g < w.groups; ++g) {
    const std::int64_t positions =
        (w.group_unit_begin[static_cast<std::size_t>(g) + 1] - w.group_unit_begin[static_cast<std::size_t>(g)]) *
        w.codes_per_unit;
    blocks += (positions + kActivationBlock - 1) / kActivationBlock;
  }
  return blocks;
}

bool int8_layout_supported(const QuantLayout& w) { return w.bits == 2 || w.bits == 4 || w.bits == 8; }

int int8_bits_slot(int bits) {
  switch (bits) {
    case 2:
      return 0;
    case 4:
      return 1;
    case 8:
      return 2;
    default:
      fail("no int8-activation kernel for {}-bit weights", bits);
  }
}

QuantKernel int8_quant_kernel(const Int8KernelTable& table, const QuantLayout& w) {
  const int offset = w.offset == QuantizedMatrix::Offset::Min ? 1 : 0;
  return table.quant[int8_bits_slot(w.bits)][scale_slot(w.scale_dtype)][offset];
}

bool int8_block_supported(const BlockLayout& w) { return w.cols % kActivationBlock == 0; }

const Int8KernelTable* int8_kernel_table(Isa isa) {
  // A lowered ISA (NIBBLE_CPU_ISA=avx2, tests comparing variants) turns these off too.
  static const bool vnni = __builtin_cpu_supports("avx512vnni") && isa_supported(Isa::Avx512);
  return isa == Isa::Avx512 && vnni ? &int8_kernels_avx512_vnni() : nullptr;
}

}  // namespace nibble::kernels::cpu

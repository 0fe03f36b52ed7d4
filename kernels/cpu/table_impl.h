#pragma once
// Builds the including per-ISA unit's kernel table from linear_impl.h and
// packed_impl.h and block_impl.h (include those first).
namespace {

template <int Bits>
void fill_quant(nibble::kernels::cpu::LinearKernelTable& table, int slot) {
  using namespace nibble::kernels::cpu;
  table.quant[slot][kScaleF32][0] = quant_linear<Bits, F32Weights, false>;
  table.quant[slot][kScaleF32][1] = quant_linear<Bits, F32Weights, true>;
  table.quant[slot][kScaleF16][0] = quant_linear<Bits, F16Weights, false>;
  table.quant[slot][kScaleF16][1] = quant_linear<Bits, F16Weights, true>;
  table.quant[slot][kScaleBF16][0] = quant_linear<Bits, BF16Weights, false>;
  table.quant[slot][kScaleBF16][1] = quant_linear<Bits, BF16Weights, true>;
}

const nibble::kernels::cpu::LinearKernelTable kTable = [] {
  using namespace nibble::kernels::cpu;
  LinearKernelTable table{};
  table.f32 = linear<F32Weights>;
  table.f16 = linear<F16Weights>;
  table.bf16 = linear<BF16Weights>;
  fill_quant<2>(table, 0);
  fill_quant<3>(table, 1);
  fill_quant<4>(table, 2);
  fill_quant<8>(table, 3);
  table.sparse24[kScaleF32] = sparse24_linear<F32Weights>;
  table.sparse24[kScaleF16] = sparse24_linear<F16Weights>;
  table.sparse24[kScaleBF16] = sparse24_linear<BF16Weights>;
  table.csr[kScaleF32] = csr_linear<F32Weights>;
  table.csr[kScaleF16] = csr_linear<F16Weights>;
  table.csr[kScaleBF16] = csr_linear<BF16Weights>;
  fill_block_kernels(table);
  table.fp8 = fp8_linear;
  return table;
}();

}  // namespace

#include "kernels/cpu/linear_kernels.h"

#include "common/error.h"

namespace nibble::kernels::cpu {
namespace {

int bits_slot(int bits) {
  switch (bits) {
    case 2:
      return 0;
    case 3:
      return 1;
    case 4:
      return 2;
    case 8:
      return 3;
    default:
      fail("no CPU kernel for {}-bit weights", bits);
  }
}

}  // namespace

int scale_slot(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return kScaleF32;
    case DType::F16:
      return kScaleF16;
    case DType::BF16:
      return kScaleBF16;
    default:
      fail("no CPU kernel for {} scales or values", dtype_name(dtype));
  }
}

const LinearKernelTable& linear_kernel_table(Isa isa) {
  return isa == Isa::Avx512 ? linear_kernels_avx512() : isa == Isa::Avx2 ? linear_kernels_avx2() : linear_kernels_scalar();
}

LinearKernel linear_kernel(DType dtype, Isa isa) {
  const LinearKernelTable& table = linear_kernel_table(isa);
  switch (dtype) {
    case DType::F32:
      return table.f32;
    case DType::F16:
      return table.f16;
    case DType::BF16:
      return table.bf16;
    default:
      fail("no CPU linear kernel for {} weights", dtype_name(dtype));
  }
}

QuantKernel quant_kernel(const QuantLayout& layout, Isa isa) {
  const int offset = layout.offset == QuantizedMatrix::Offset::Min ? 1 : 0;
  return linear_kernel_table(isa).quant[bits_slot(layout.bits)][scale_slot(layout.scale_dtype)][offset];
}

Sparse24Kernel sparse24_kernel(const Sparse24Layout& layout, Isa isa) {
  return linear_kernel_table(isa).sparse24[scale_slot(layout.scale_dtype)];
}

CsrKernel csr_kernel(const CsrMatrix& matrix, Isa isa) { return linear_kernel_table(isa).csr[scale_slot(matrix.dtype)]; }

BlockKernel block_kernel(const BlockLayout& layout, Isa isa) {
  return linear_kernel_table(isa).block[static_cast<int>(layout.format)];
}

}  // namespace nibble::kernels::cpu

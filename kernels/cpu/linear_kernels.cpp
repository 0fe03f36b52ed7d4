#include "kernels/cpu/linear_kernels.h"

#include "common/error.h"

namespace nibble::kernels::cpu {

LinearKernel linear_kernel(DType dtype, Isa isa) {
  const LinearKernelTable& table = isa == Isa::Avx512 ? linear_kernels_avx512()
                                   : isa == Isa::Avx2 ? linear_kernels_avx2()
                                                      : linear_kernels_scalar();
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

}  // namespace nibble::kernels::cpu

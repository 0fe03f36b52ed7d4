#include "kernels/cpu/elementwise_kernels.h"

namespace nibble::kernels::cpu {

const ElementwiseKernelTable& elementwise_kernel_table(Isa isa) {
  return isa == Isa::Avx512 ? elementwise_kernels_avx512()
         : isa == Isa::Avx2 ? elementwise_kernels_avx2()
                            : elementwise_kernels_scalar();
}

}  // namespace nibble::kernels::cpu

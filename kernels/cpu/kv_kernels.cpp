#include "kernels/cpu/kv_kernels.h"

namespace nibble::kernels::cpu {

const KvKernelTable& kv_kernel_table(Isa isa) {
  return isa == Isa::Avx512 ? kv_kernels_avx512() : isa == Isa::Avx2 ? kv_kernels_avx2() : kv_kernels_scalar();
}

AttentionKernel attention_kernel(KvFormat format, Isa isa) {
  return kv_kernel_table(isa).attention[static_cast<int>(format)];
}

void store_f16(const float* x, std::int64_t n, std::uint16_t* out) { kv_kernel_table(active_isa()).to_f16(x, n, out); }

}  // namespace nibble::kernels::cpu

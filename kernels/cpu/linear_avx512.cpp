// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; only
// reached after CPUID says AVX-512 is there.
#include "kernels/cpu/avx512_traits.h"
#include "kernels/cpu/elementwise_kernels.h"
#include "kernels/cpu/kv_kernels.h"
#include "kernels/cpu/linear_kernels.h"

#include "kernels/cpu/linear_impl.h"
#include "kernels/cpu/packed_impl.h"
#include "kernels/cpu/block_impl.h"
#include "kernels/cpu/fp8_impl.h"
#include "kernels/cpu/table_impl.h"
#include "kernels/cpu/kv_impl.h"
#include "kernels/cpu/elementwise_impl.h"

namespace nibble::kernels::cpu {
const LinearKernelTable& linear_kernels_avx512() { return kTable; }
const KvKernelTable& kv_kernels_avx512() { return kKvTable; }
const ElementwiseKernelTable& elementwise_kernels_avx512() { return kElementwiseTable; }
}  // namespace nibble::kernels::cpu

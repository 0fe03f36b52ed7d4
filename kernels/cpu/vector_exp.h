#pragma once
// e^x a vector at a time, to about 1 ulp, for the vector traits of each ISA:
// 2^n e^r with n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts, Cody-Waite)
// and e^r by Cephes' expf polynomial. Written once over the traits' primitives
// (set1, min, max, round, fma, fnmadd, mul, add, scale2n) so every ISA computes
// the same function. NaN stays NaN: it is the second operand of both clamps, which
// the min/max instructions return when either operand is NaN.
#include <initializer_list>

namespace nibble::kernels::cpu {

template <typename V>
typename V::reg vector_exp(typename V::reg x) {
  x = V::min(V::set1(88.3f), V::max(V::set1(-87.3f), x));
  const auto n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  auto r = V::fnmadd(n, V::set1(0.693359375f), x);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  auto p = V::set1(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f}) {
    p = V::fma(p, r, V::set1(c));
  }
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::scale2n(p, n);
}

}  // namespace nibble::kernels::cpu

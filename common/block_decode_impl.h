#pragma once
// The block decoders of common/block_format.h, written once and included by every
// unit that decodes blocks: the reference (common/block_format.cpp, baseline
// flags) and each per-ISA kernel unit, which compiles the same loops with its own
// vector flags. Everything is in the including unit's anonymous namespace, so no
// wide instruction can leak into another unit through the linker.
//
// Each decoder reads a block's scales once (the K-quants' packed 6-bit or 8-bit
// sub-block scales become one float scale and one float offset per sub-block) and
// then writes each sub-block as an affine or table map of its codes: plain loops
// over 16/32 codes that the compiler vectorizes.
//
// Each decoder also has `unpack`, the integer view the int8-activation kernels
// multiply on integer dot products: every weight as an unsigned 8-bit code c and,
// for each run of 4 weights (a "lane": they share one 16-weight sub-block), a float
// step s and offset o with weight = s * c - o. Signed codes are shifted up by a
// constant zero point z folded into o (o = s * z - minimum), so `vpdpbusd` (u8 x s8)
// applies. unpack_test checks s * c - o against `decode` for every format.
#include <cstdint>
#include <cstring>

#include "common/block_format.h"
#include "common/half.h"

namespace {

inline float block_half(const std::uint8_t* at) {
  std::uint16_t bits;
  std::memcpy(&bits, at, 2);
  return nibble::f16_to_f32(bits);
}

// Weights per lane of `unpack`'s steps and offsets.
constexpr int kUnpackLane = 4;

// Sets the step and offset of the `lanes` lanes from `first`.
inline void unpack_lanes(float* __restrict step, float* __restrict offset, int first, int lanes, float s, float o) {
  for (int i = first; i < first + lanes; ++i) {
    step[i] = s;
    offset[i] = o;
  }
}

// IQ4_NL / IQ4_XS code book: a 4-bit code picks one of these int8 levels.
constexpr float kIq4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
// The same levels + 128, as unpack's unsigned codes (zero point 128).
constexpr std::uint8_t kIq4Codes[16] = {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};

// Q5_0 / Q5_1: 32 codes of 5 bits; low nibbles as Q4_0, fifth bits in a u32.
template <bool kMin>
struct Q5Block {
  static constexpr nibble::BlockFormat kFormat = kMin ? nibble::BlockFormat::Q5_1 : nibble::BlockFormat::Q5_0;
  static constexpr int kElements = 32;
  static constexpr int kBytes = kMin ? 24 : 22;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const float d = block_half(b);
    const float m = kMin ? block_half(b + 2) : 0.0f;
    // Q5_0 is d * (q - 16) and Q5_1 d * q + m, rounded as gguf-py and ggml round them.
    const auto value = [&](std::uint32_t q) {
      return kMin ? d * static_cast<float>(q) + m : d * static_cast<float>(static_cast<int>(q) - 16);
    };
    const std::uint8_t* qh_bytes = b + (kMin ? 4 : 2);
    std::uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    const std::uint8_t* qs = qh_bytes + 4;
    for (int j = 0; j < 16; ++j) {
      const std::uint32_t low = (qs[j] & 15u) | (((qh >> j) & 1u) << 4);
      const std::uint32_t high = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
      out[j] = value(low);
      out[j + 16] = value(high);
    }
  }
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const float d = block_half(b);
    const std::uint8_t* qh_bytes = b + (kMin ? 4 : 2);
    std::uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    const std::uint8_t* qs = qh_bytes + 4;
    for (int j = 0; j < 16; ++j) {
      codes[j] = static_cast<std::uint8_t>((qs[j] & 15u) | (((qh >> j) & 1u) << 4));
      codes[j + 16] = static_cast<std::uint8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
    unpack_lanes(step, offset, 0, 8, d, kMin ? -block_half(b + 2) : 16.0f * d);
  }
};

// 6-bit sub-block scales and minimums of Q4_K / Q5_K, 12 bytes for 8 pairs.
inline void k_scales_mins(const std::uint8_t* s, float d, float dmin, float* scale, float* min) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = d * static_cast<float>(s[j] & 63);
    min[j] = dmin * static_cast<float>(s[j + 4] & 63);
    scale[j + 4] = d * static_cast<float>((s[j + 8] & 15) | ((s[j] >> 6) << 4));
    min[j + 4] = dmin * static_cast<float>((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

// Q4_K (kHigh false) / Q5_K: 8 sub-blocks of 32; value = scale * q - min.
template <bool kHigh>
struct Q45KBlock {
  static constexpr nibble::BlockFormat kFormat = kHigh ? nibble::BlockFormat::Q5_K : nibble::BlockFormat::Q4_K;
  static constexpr int kElements = 256;
  static constexpr int kBytes = kHigh ? 176 : 144;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    float scale[8], min[8];
    k_scales_mins(b + 4, block_half(b), block_half(b + 2), scale, min);
    const std::uint8_t* qh = b + 16;                    // Q5_K: bit i of qh[l] is sub-block i, element l
    const std::uint8_t* qs = b + 16 + (kHigh ? 32 : 0);  // 32 bytes per pair of sub-blocks
    for (int pair = 0; pair < 4; ++pair) {
      const int lo = 2 * pair, hi = 2 * pair + 1;
      float* o = out + 64 * pair;
      for (int l = 0; l < 32; ++l) {
        std::uint32_t q0 = qs[32 * pair + l] & 15u, q1 = qs[32 * pair + l] >> 4;
        if constexpr (kHigh) {
          q0 |= ((qh[l] >> lo) & 1u) << 4;
          q1 |= ((qh[l] >> hi) & 1u) << 4;
        }
        o[l] = scale[lo] * static_cast<float>(q0) - min[lo];
        o[32 + l] = scale[hi] * static_cast<float>(q1) - min[hi];
      }
    }
  }
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    float scale[8], min[8];
    k_scales_mins(b + 4, block_half(b), block_half(b + 2), scale, min);
    const std::uint8_t* qh = b + 16;
    const std::uint8_t* qs = b + 16 + (kHigh ? 32 : 0);
    for (int pair = 0; pair < 4; ++pair) {
      std::uint8_t* c = codes + 64 * pair;
      for (int l = 0; l < 32; ++l) {
        std::uint32_t q0 = qs[32 * pair + l] & 15u, q1 = qs[32 * pair + l] >> 4;
        if constexpr (kHigh) {
          q0 |= ((qh[l] >> (2 * pair)) & 1u) << 4;
          q1 |= ((qh[l] >> (2 * pair + 1)) & 1u) << 4;
        }
        c[l] = static_cast<std::uint8_t>(q0);
        c[32 + l] = static_cast<std::uint8_t>(q1);
      }
    }
    for (int j = 0; j < 8; ++j) unpack_lanes(step, offset, 8 * j, 8, scale[j], min[j]);
  }
};

// Q2_K: 16 sub-blocks of 16, 4-bit scale and min each; 2-bit codes, four per byte.
struct Q2KBlock {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::Q2_K;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 84;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const std::uint8_t* sc = b;
    const std::uint8_t* qs = b + 16;
    const float d = block_half(b + 80), dmin = block_half(b + 82);
    float scale[16], min[16];
    for (int i = 0; i < 16; ++i) {
      scale[i] = d * static_cast<float>(sc[i] & 15);
      min[i] = dmin * static_cast<float>(sc[i] >> 4);
    }
    // Element 128h + 32s + l is bits 2s..2s+1 of qs[32h + l]; sub-block = element / 16.
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        float* o = out + 128 * h + 32 * s;
        for (int half = 0; half < 2; ++half) {
          const int sub = 8 * h + 2 * s + half;
          const float step = scale[sub], mn = min[sub];
          const std::uint8_t* q = qs + 32 * h + 16 * half;
          for (int l = 0; l < 16; ++l) o[16 * half + l] = step * static_cast<float>((q[l] >> (2 * s)) & 3u) - mn;
        }
      }
    }
  }
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const std::uint8_t* sc = b;
    const std::uint8_t* qs = b + 16;
    const float d = block_half(b + 80), dmin = block_half(b + 82);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int l = 0; l < 32; ++l) codes[128 * h + 32 * s + l] = static_cast<std::uint8_t>((qs[32 * h + l] >> (2 * s)) & 3u);
      }
    }
    // Sub-block i is elements 16i..16i+15 (element 128h + 32s + 16half + l: i = 8h + 2s + half).
    for (int i = 0; i < 16; ++i) {
      unpack_lanes(step, offset, 4 * i, 4, d * static_cast<float>(sc[i] & 15), dmin * static_cast<float>(sc[i] >> 4));
    }
  }
};

// Q3_K: Q2_K's 2-bit layout plus a high-bit mask (clear = subtract 4), and 16
// signed 6-bit sub-block scales packed in 12 bytes.
struct Q3KBlock {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::Q3_K;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 110;
  // Sub-block i's signed 6-bit scale (-32..31) from the 12 packed bytes `s`.
  static int sub_scale(const std::uint8_t* s, int i) {
    const int low = (i < 8 ? s[i] : s[i - 8] >> 4) & 15;
    const int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (low | (high << 4)) - 32;
  }
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const std::uint8_t* hmask = b;
    const std::uint8_t* qs = b + 32;
    const std::uint8_t* s = b + 96;
    const float d = block_half(b + 108);
    float scale[16];
    for (int i = 0; i < 16; ++i) scale[i] = d * static_cast<float>(sub_scale(s, i));
    for (int h = 0; h < 2; ++h) {
      for (int sh = 0; sh < 4; ++sh) {
        float* o = out + 128 * h + 32 * sh;
        const int mask_bit = 4 * h + sh;  // element e uses bit e / 32 of hmask[e % 32]
        for (int half = 0; half < 2; ++half) {
          const float sc = scale[8 * h + 2 * sh + half];
          const std::uint8_t* q = qs + 32 * h + 16 * half;
          const std::uint8_t* mask = hmask + 16 * half;
          for (int l = 0; l < 16; ++l) {
            // 4 * (1 - high bit) subtracted: codes -4..3.
            const int v = static_cast<int>((q[l] >> (2 * sh)) & 3u) - 4 + 4 * static_cast<int>((mask[l] >> mask_bit) & 1u);
            o[16 * half + l] = sc * static_cast<float>(v);
          }
        }
      }
    }
  }
  // Codes q + 4 * high bit (0..7), zero point 4.
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const std::uint8_t* hmask = b;
    const std::uint8_t* qs = b + 32;
    const std::uint8_t* s = b + 96;
    const float d = block_half(b + 108);
    for (int h = 0; h < 2; ++h) {
      for (int sh = 0; sh < 4; ++sh) {
        const int mask_bit = 4 * h + sh;
        for (int l = 0; l < 32; ++l) {
          codes[128 * h + 32 * sh + l] =
              static_cast<std::uint8_t>(((qs[32 * h + l] >> (2 * sh)) & 3u) | (((hmask[l] >> mask_bit) & 1u) << 2));
        }
      }
    }
    for (int i = 0; i < 16; ++i) {
      const float sc = d * static_cast<float>(sub_scale(s, i));
      unpack_lanes(step, offset, 4 * i, 4, sc, 4.0f * sc);
    }
  }
};

// Q6_K: 16 sub-blocks of 16 with int8 scales; 4 low bits in ql, 2 high in qh.
struct Q6KBlock {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::Q6_K;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 210;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = block_half(b + 208);
    float scale[16];
    for (int i = 0; i < 16; ++i) scale[i] = d * static_cast<float>(sc[i]);
    // Element 128h + 32s + l: the low nibble (s < 2) or high nibble (s >= 2) of
    // ql[64h + 32(s & 1) + l], high bits 2s..2s+1 of qh[32h + l]. One pass reads each
    // byte once and writes all four quarters, with constant shifts.
    for (int h = 0; h < 2; ++h) {
      float* o = out + 128 * h;
      for (int half = 0; half < 2; ++half) {
        const float* step = scale + 8 * h + half;  // quarter s uses step[2s]
        const float s0 = step[0], s1 = step[2], s2 = step[4], s3 = step[6];
        const std::uint8_t* a = ql + 64 * h + 16 * half;
        const std::uint8_t* c = a + 32;
        const std::uint8_t* hi = qh + 32 * h + 16 * half;
        float* oh = o + 16 * half;
        for (int l = 0; l < 16; ++l) {
          oh[l] = s0 * static_cast<float>(static_cast<int>((a[l] & 15u) | ((hi[l] & 3u) << 4)) - 32);
          oh[32 + l] = s1 * static_cast<float>(static_cast<int>((c[l] & 15u) | (((hi[l] >> 2) & 3u) << 4)) - 32);
          oh[64 + l] = s2 * static_cast<float>(static_cast<int>((a[l] >> 4) | (((hi[l] >> 4) & 3u) << 4)) - 32);
          oh[96 + l] = s3 * static_cast<float>(static_cast<int>((c[l] >> 4) | ((hi[l] >> 6) << 4)) - 32);
        }
      }
    }
  }
  // Codes 0..63, zero point 32.
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = block_half(b + 208);
    for (int h = 0; h < 2; ++h) {
      const std::uint8_t* a = ql + 64 * h;
      const std::uint8_t* c = a + 32;
      const std::uint8_t* hi = qh + 32 * h;
      std::uint8_t* o = codes + 128 * h;
      for (int l = 0; l < 32; ++l) {
        o[l] = static_cast<std::uint8_t>((a[l] & 15u) | ((hi[l] & 3u) << 4));
        o[32 + l] = static_cast<std::uint8_t>((c[l] & 15u) | (((hi[l] >> 2) & 3u) << 4));
        o[64 + l] = static_cast<std::uint8_t>((a[l] >> 4) | (((hi[l] >> 4) & 3u) << 4));
        o[96 + l] = static_cast<std::uint8_t>((c[l] >> 4) | ((hi[l] >> 6) << 4));
      }
    }
    for (int i = 0; i < 16; ++i) {
      const float s = d * static_cast<float>(sc[i]);
      unpack_lanes(step, offset, 4 * i, 4, s, 32.0f * s);
    }
  }
};

// Q8_K: a float32 scale and 256 int8 codes (then 16 int16 partial sums, unused here).
struct Q8KBlock {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::Q8_K;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 292;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    float d;
    std::memcpy(&d, b, 4);
    const auto* qs = reinterpret_cast<const std::int8_t*>(b + 4);
    for (int l = 0; l < 256; ++l) out[l] = d * static_cast<float>(qs[l]);
  }
  // Codes q + 128, zero point 128.
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    float d;
    std::memcpy(&d, b, 4);
    for (int l = 0; l < 256; ++l) codes[l] = static_cast<std::uint8_t>(b[4 + l] ^ 0x80u);
    unpack_lanes(step, offset, 0, 64, d, 128.0f * d);
  }
};

// IQ4_NL: Q4_0's nibble order, codes through the non-linear code book.
struct Iq4NlBlock {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::IQ4_NL;
  static constexpr int kElements = 32;
  static constexpr int kBytes = 18;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    float level[16];
    const float d = block_half(b);
    for (int i = 0; i < 16; ++i) level[i] = d * kIq4Levels[i];
    for (int j = 0; j < 16; ++j) {
      out[j] = level[b[2 + j] & 15];
      out[j + 16] = level[b[2 + j] >> 4];
    }
  }
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const float d = block_half(b);
    for (int j = 0; j < 16; ++j) {
      codes[j] = kIq4Codes[b[2 + j] & 15];
      codes[j + 16] = kIq4Codes[b[2 + j] >> 4];
    }
    unpack_lanes(step, offset, 0, 8, d, 128.0f * d);
  }
};

// IQ4_XS: 8 sub-blocks of 32 with 6-bit signed scales (low 4 bits in scales_l,
// high 2 in scales_h), each sub-block an IQ4_NL body.
struct Iq4XsBlock {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::IQ4_XS;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 136;
  // Sub-block i's signed 6-bit scale (-32..31): low 4 bits in scales_l, high 2 in scales_h.
  static int sub_scale(const std::uint8_t* b, int i) {
    const std::uint32_t scales_h = static_cast<std::uint32_t>(b[2]) | (static_cast<std::uint32_t>(b[3]) << 8);
    const std::uint8_t* scales_l = b + 4;
    return static_cast<int>(((scales_l[i / 2] >> (4 * (i % 2))) & 15) | (((scales_h >> (2 * i)) & 3u) << 4)) - 32;
  }
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const float d = block_half(b);
    const std::uint8_t* qs = b + 8;
    for (int i = 0; i < 8; ++i) {
      const float dl = d * static_cast<float>(sub_scale(b, i));
      float level[16];
      for (int v = 0; v < 16; ++v) level[v] = dl * kIq4Levels[v];
      for (int j = 0; j < 16; ++j) {
        out[32 * i + j] = level[qs[16 * i + j] & 15];
        out[32 * i + j + 16] = level[qs[16 * i + j] >> 4];
      }
    }
  }
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const float d = block_half(b);
    const std::uint8_t* qs = b + 8;
    for (int i = 0; i < 8; ++i) {
      const float dl = d * static_cast<float>(sub_scale(b, i));
      for (int j = 0; j < 16; ++j) {
        codes[32 * i + j] = kIq4Codes[qs[16 * i + j] & 15];
        codes[32 * i + j + 16] = kIq4Codes[qs[16 * i + j] >> 4];
      }
      unpack_lanes(step, offset, 8 * i, 8, dl, 128.0f * dl);
    }
  }
};

// TQ1_0: ternary weights, five per byte in base 3 (the byte is the fraction
// t/243 scaled to 256, so digit n is the top of (byte * 3^n) mod 256 times 3),
// then four per byte in qh; value = d * (trit - 1).
struct Tq1Block {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::TQ1_0;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 54;
  // put(element, trit) for every element.
  template <typename Put>
  static void trits(const std::uint8_t* __restrict b, Put&& put) {
    constexpr std::uint8_t kPow3[5] = {1, 3, 9, 27, 81};
    const auto digits = [&](const std::uint8_t* bytes, int count, int digits_per_byte, int first) {
      for (int n = 0; n < digits_per_byte; ++n) {
        for (int m = 0; m < count; ++m) {
          const auto shifted = static_cast<std::uint8_t>(bytes[m] * kPow3[n]);
          put(first + n * count + m, (static_cast<int>(shifted) * 3) >> 8);
        }
      }
    };
    digits(b, 32, 5, 0);         // elements 0..159
    digits(b + 32, 16, 5, 160);  // 160..239
    digits(b + 48, 4, 4, 240);   // 240..255
  }
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const float d = block_half(b + 52);
    trits(b, [&](int e, int trit) { out[e] = d * static_cast<float>(trit - 1); });
  }
  // Codes 0..2, zero point 1.
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const float d = block_half(b + 52);
    trits(b, [&](int e, int trit) { codes[e] = static_cast<std::uint8_t>(trit); });
    unpack_lanes(step, offset, 0, 64, d, d);
  }
};

// TQ2_0: ternary weights as 2-bit codes, Q2_K's order; value = d * (q - 1).
struct Tq2Block {
  static constexpr nibble::BlockFormat kFormat = nibble::BlockFormat::TQ2_0;
  static constexpr int kElements = 256;
  static constexpr int kBytes = 66;
  static void decode(const std::uint8_t* __restrict b, float* __restrict out) {
    const float d = block_half(b + 64);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int l = 0; l < 32; ++l) {
          out[128 * h + 32 * s + l] = d * static_cast<float>(static_cast<int>((b[32 * h + l] >> (2 * s)) & 3u) - 1);
        }
      }
    }
  }
  // Codes 0..3, zero point 1.
  static void unpack(const std::uint8_t* __restrict b, std::uint8_t* __restrict codes, float* __restrict step,
                     float* __restrict offset) {
    const float d = block_half(b + 64);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int l = 0; l < 32; ++l) codes[128 * h + 32 * s + l] = static_cast<std::uint8_t>((b[32 * h + l] >> (2 * s)) & 3u);
      }
    }
    unpack_lanes(step, offset, 0, 64, d, d);
  }
};

// Calls body(Block{}) with the decoder of `format`.
template <typename Body>
decltype(auto) with_block_decoder(nibble::BlockFormat format, Body&& body) {
  using nibble::BlockFormat;
  switch (format) {
    case BlockFormat::Q5_0: return body(Q5Block<false>{});
    case BlockFormat::Q5_1: return body(Q5Block<true>{});
    case BlockFormat::Q2_K: return body(Q2KBlock{});
    case BlockFormat::Q3_K: return body(Q3KBlock{});
    case BlockFormat::Q4_K: return body(Q45KBlock<false>{});
    case BlockFormat::Q5_K: return body(Q45KBlock<true>{});
    case BlockFormat::Q6_K: return body(Q6KBlock{});
    case BlockFormat::Q8_K: return body(Q8KBlock{});
    case BlockFormat::IQ4_NL: return body(Iq4NlBlock{});
    case BlockFormat::IQ4_XS: return body(Iq4XsBlock{});
    case BlockFormat::TQ1_0: return body(Tq1Block{});
    case BlockFormat::TQ2_0: break;
  }
  return body(Tq2Block{});
}

}  // namespace

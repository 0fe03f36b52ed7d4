#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/dtype.h"
#include "common/error.h"
#include "common/half.h"
#include "common/log.h"
#include "common/mapped_file.h"
#include "common/whole_number.h"

namespace nibble {
namespace {

TEST(Half, EveryF16ValueRoundTripsThroughFloat) {
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = f16_to_f32(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "bits " << bits;
  }
}

TEST(Half, F16RoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> magnitude(-20.0f, 16.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = std::ldexp(1.0f + static_cast<float>(rng() % 1000) / 1000.0f, static_cast<int>(magnitude(rng))) *
                    (rng() % 2 ? 1.0f : -1.0f);
    const std::uint16_t h = f32_to_f16(x);
    const float rounded = f16_to_f32(h);
    // No other f16 value is strictly closer.
    for (const int step : {-1, 1}) {
      const auto neighbour = static_cast<std::uint16_t>(h + step);
      const float other = f16_to_f32(neighbour);
      if (std::isnan(other) || std::isinf(other) || (neighbour & 0x7fff) == 0x7fff) continue;
      if ((h & 0x8000) != (neighbour & 0x8000)) continue;
      ASSERT_LE(std::abs(rounded - x), std::abs(other - x)) << x;
    }
  }
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(70000.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -26)), 0x0000);
}

TEST(Half, Bf16RoundTripAndRounding) {
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = bf16_to_f32(h);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h);
  }
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // exactly halfway: ties to even
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // halfway above an odd mantissa: rounds up
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, ParsesSafetensorsNames) {
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(dtype_size(*parse_dtype("F32")), 4u);
  EXPECT_EQ(dtype_name(DType::U8), "U8");
  EXPECT_FALSE(parse_dtype("F4").has_value());
  EXPECT_FALSE(parse_dtype("f32").has_value());
}

TEST(WholeNumber, OnlyWholeDoublesInsideInt64Convert) {
  EXPECT_EQ(whole_int64(4.0), 4);
  EXPECT_EQ(whole_int64(-0.0), 0);
  EXPECT_EQ(whole_int64(-9223372036854775808.0), INT64_MIN);
  EXPECT_EQ(whole_int64(std::nextafter(9223372036854775808.0, 0.0)), std::int64_t{0x7FFFFFFFFFFFFC00});
  EXPECT_EQ(whole_int64(9223372036854775808.0), std::nullopt) << "2^63 does not fit";
  EXPECT_EQ(whole_int64(3.3e41), std::nullopt);
  EXPECT_EQ(whole_int64(4.5), std::nullopt);
  EXPECT_EQ(whole_int64(std::nan("")), std::nullopt);
  EXPECT_EQ(whole_int64(-INFINITY), std::nullopt);
}

TEST(MappedFile, MapsBytesAndReportsMissingFiles) {
  const auto path = std::filesystem::temp_directory_path() / "nibble_mapped_file_test.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out << "hello";
  }
  const MappedFile file(path);
  ASSERT_EQ(file.size(), 5u);
  EXPECT_EQ(static_cast<char>(file.data()[4]), 'o');
  std::filesystem::remove(path);
  try {
    MappedFile missing("/nonexistent/nibble/file.bin");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/nibble/file.bin"), std::string::npos);
  }
}

TEST(LogClip, ShortTextIsKeptAndLongTextIsCutAtACharacterWithItsLength) {
  EXPECT_EQ(log::clip("short"), "short");
  EXPECT_EQ(log::clip(std::string(200, 'a')), std::string(200, 'a'));
  EXPECT_EQ(log::clip(std::string(1000, 'a')), std::string(200, 'a') + "…(1000 bytes)");
  // "é" is two bytes; a cut after 3 bytes of "ééé" would split the second one.
  EXPECT_EQ(log::clip("ééé", 3), "é…(6 bytes)");
}

}  // namespace
}  // namespace nibble

namespace nibble {
namespace {

// log::quoted replaces fmt's "{:?}" for untrusted text in errors: fmt 9 aborted
// the process on a string ending in a truncated UTF-8 sequence (found by the GGUF
// fuzzer in a tokenizer.ggml.merges entry).
TEST(LogQuoted, EscapesWhatIsNotPrintableUtf8AndNeverAborts) {
  EXPECT_EQ(log::quoted("a\xe0\x97"), "\"a\\xe0\\x97\"");
  EXPECT_EQ(log::quoted("say \"hi\"\\\n\t"), "\"say \\\"hi\\\"\\\\\\n\\t\"");
  EXPECT_EQ(log::quoted("caf\xc3\xa9 \xf0\x9f\x99\x82"), "\"caf\xc3\xa9 \xf0\x9f\x99\x82\"");
  EXPECT_EQ(log::quoted(std::string("\x00\x7f\xc0\x80\xed\xa0\x80", 7)), "\"\\x00\\x7f\\xc0\\x80\\xed\\xa0\\x80\"");
  const std::string long_text(1000, 'x');
  EXPECT_LT(log::quoted(long_text).size(), 300u);
}

}  // namespace

// --log-format json turns each "event key=value" line into one JSON object's
// fields: quoted values stay strings (a request id of digits too), bare numbers
// and booleans keep their type, text that is no pair is kept, and nothing a
// client sent can break the line's JSON.
TEST(LogJson, EventLinesBecomeTypedFields) {
  EXPECT_EQ(log::event_json_fields("http_request id=7 request_id=\"0042\" path=/v1/models seconds=0.013 ok=true"),
            "\"msg\":\"http_request\",\"id\":7,\"request_id\":\"0042\",\"path\":\"/v1/models\","
            "\"seconds\":0.013,\"ok\":true");
  EXPECT_EQ(log::event_json_fields("chat_template_unusable model=m error=\"bad {{ x\" (chat requests will be refused)"),
            "\"msg\":\"chat_template_unusable\",\"model\":\"m\",\"error\":\"bad {{ x\","
            "\"text\":\"(chat requests will be refused)\"");
  EXPECT_EQ(log::event_json_fields("e version=007 big=1e400x nan=nan"),
            "\"msg\":\"e\",\"version\":\"007\",\"big\":\"1e400x\",\"nan\":\"nan\"");
  // What log::quoted escaped comes back as the original text, JSON-escaped.
  const std::string hostile = std::string("say \"hi\"\\\n\t\x01") + "\xe0\x97";
  EXPECT_EQ(log::event_json_fields("e error=" + log::quoted(hostile)),
            "\"msg\":\"e\",\"error\":\"say \\\"hi\\\"\\\\\\n\\t\\u0001\\ufffd\\ufffd\"");
  // Clipped quoting has no closing quote: the value runs to the end.
  const std::string clipped = log::event_json_fields("e error=" + log::quoted(std::string(300, 'a')) + " tail=1");
  EXPECT_EQ(clipped.find("\"tail\""), std::string::npos);
  EXPECT_NE(clipped.find("bytes)"), std::string::npos);
}

}  // namespace nibble

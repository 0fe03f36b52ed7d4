#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "loader/safetensors.h"
#include "test_util.h"

namespace nibble {
namespace {

using testing::expect_error;
using testing::TempDir;
using testing::write_file;

std::string raw_safetensors(const nlohmann::json& header, const std::string& data) {
  const std::string text = header.dump();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  return bytes + text + data;
}

TEST(Safetensors, WritesAndMapsTensorsWithoutCopying) {
  TempDir dir;
  std::vector<float> a{1.5f, -2.0f, 3.25f, 4.0f, 5.0f, 6.0f};
  std::vector<std::uint16_t> b{0x3c00, 0x4000};
  TensorView va{"layer.a", DType::F32, {2, 3}, std::as_bytes(std::span(a)), nullptr};
  TensorView vb{"b", DType::F16, {2}, std::as_bytes(std::span(b)), nullptr};
  write_safetensors(dir / "model.safetensors", {va, vb}, {{"format", "pt"}});

  const SafetensorsFile file(dir / "model.safetensors");
  ASSERT_EQ(file.tensors().size(), 2u);
  const TensorView* read = file.find("layer.a");
  ASSERT_NE(read, nullptr);
  EXPECT_EQ(read->shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(read->dtype, DType::F32);
  EXPECT_EQ(std::vector<float>(read->as<float>().begin(), read->as<float>().end()), a);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(read->bytes.data()) % alignof(float), 0u) << "data must stay aligned";
  EXPECT_EQ(file.find("b")->as<std::uint16_t>()[1], 0x4000);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.find("missing"), nullptr);
}

TEST(Safetensors, RejectsCorruptHeadersWithTheFileAndTensorNamed) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  const auto entry = [](const char* dtype, std::vector<int> shape, std::uint64_t begin, std::uint64_t end) {
    return nlohmann::json{{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
  };
  const std::string eight(8, '\0');

  write_file(path, raw_safetensors({{"w", entry("F32", {2}, 0, 8)}}, eight));
  EXPECT_NO_THROW(SafetensorsFile{path});

  write_file(path, raw_safetensors({{"w", entry("Q7", {2}, 0, 8)}}, eight));
  expect_error([&] { SafetensorsFile{path}; }, {"bad.safetensors", "'w'", "unknown dtype 'Q7'"});

  write_file(path, raw_safetensors({{"w", entry("F32", {3}, 0, 8)}}, eight));
  expect_error([&] { SafetensorsFile{path}; }, {"'w'", "needs 12"});

  write_file(path, raw_safetensors({{"w", entry("F32", {4}, 0, 16)}}, eight));
  expect_error([&] { SafetensorsFile{path}; }, {"'w'", "truncated"});

  write_file(path, raw_safetensors({{"w", entry("F32", {2}, 0, 8)}, {"v", entry("F32", {1}, 4, 8)}}, eight));
  expect_error([&] { SafetensorsFile{path}; }, {"overlap"});

  write_file(path, raw_safetensors({{"w", {{"dtype", "F32"}}}}, eight));
  expect_error([&] { SafetensorsFile{path}; }, {"'w'", "data_offsets"});

  write_file(path, raw_safetensors({{"w", entry("F32", {-2}, 0, 8)}}, eight));
  expect_error([&] { SafetensorsFile{path}; }, {"'w'"});

  write_file(path, std::string("\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx", 24));
  expect_error([&] { SafetensorsFile{path}; }, {"bad.safetensors", "JSON"});

  write_file(path, std::string("\xff\xff\xff\xff\x00\x00\x00\x00{}", 10));
  expect_error([&] { SafetensorsFile{path}; }, {"header length"});

  write_file(path, "abc");
  expect_error([&] { SafetensorsFile{path}; }, {"truncated"});
}

TEST(Safetensors, EveryTruncationOfAValidFileIsAnErrorNotACrash) {
  TempDir dir;
  std::vector<float> values(64, 1.0f);
  write_safetensors(dir / "good.safetensors",
                    {TensorView{"x", DType::F32, {8, 8}, std::as_bytes(std::span(values)), nullptr}});
  const std::string bytes = testing::read_file(dir / "good.safetensors");
  for (std::size_t keep = 0; keep < bytes.size(); keep += 7) {
    write_file(dir / "cut.safetensors", bytes.substr(0, keep));
    expect_error([&] { SafetensorsFile{dir / "cut.safetensors"}; }, {"cut.safetensors"});
  }
}

TEST(Safetensors, LoadsShardedCheckpointsThroughTheIndex) {
  TempDir dir;
  std::vector<float> one{1.0f}, two{2.0f, 3.0f};
  write_safetensors(dir / "model-00001-of-00002.safetensors",
                    {TensorView{"a", DType::F32, {1}, std::as_bytes(std::span(one)), nullptr}});
  write_safetensors(dir / "model-00002-of-00002.safetensors",
                    {TensorView{"b", DType::F32, {2}, std::as_bytes(std::span(two)), nullptr}});
  const nlohmann::json index = {
      {"metadata", {{"total_size", 12}}},
      {"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}};
  write_file(dir / "model.safetensors.index.json", index.dump());

  const auto weights = SafetensorsWeights::open_folder(dir.path());
  EXPECT_TRUE(weights->contains("a"));
  EXPECT_EQ(weights->load("b").as<float>()[1], 3.0f);
  EXPECT_EQ(weights->list().size(), 2u);
  expect_error([&] { weights->load("c"); }, {"'c'", "missing"});

  nlohmann::json broken = index;
  broken["weight_map"]["c"] = "model-00003-of-00002.safetensors";
  write_file(dir / "model.safetensors.index.json", broken.dump());
  expect_error([&] { SafetensorsWeights::open_folder(dir.path()); }, {"model-00003-of-00002.safetensors", "missing"});

  broken = index;
  broken["weight_map"]["c"] = "model-00001-of-00002.safetensors";
  write_file(dir / "model.safetensors.index.json", broken.dump());
  expect_error([&] { SafetensorsWeights::open_folder(dir.path()); }, {"'c'", "lacks"});
}

}  // namespace
}  // namespace nibble

#include "engine/step_plan_codec.h"

#include <cstdint>
#include <cstring>
#include <span>

#include "common/byte_reader.h"
#include "common/error.h"

namespace nibble::engine {

namespace {

// "NBFP" and a version: ranks of different builds refuse each other's plans
// instead of misreading them.
constexpr std::uint32_t kMagic = 0x5046424E;
constexpr std::uint32_t kVersion = 1;

class Writer {
 public:
  template <typename T>
  void put(T value) {
    out_.append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  template <typename T>
  void put_vector(const std::vector<T>& values) {
    put<std::uint64_t>(values.size());
    if (!values.empty()) out_.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view bytes)
      : reader_(std::as_bytes(std::span(bytes.data(), bytes.size())), "step plan message") {}
  template <typename T>
  T get(std::string_view what) {
    return reader_.read<T>(what);
  }
  template <typename T>
  std::vector<T> get_vector(std::string_view what) {
    const auto count = reader_.read<std::uint64_t>(what);
    if (count > reader_.remaining() / sizeof(T)) {
      fail("step plan message: {} claims {} elements but {} bytes remain", what, count, reader_.remaining());
    }
    std::vector<T> values(count);
    const auto bytes = reader_.take(count * sizeof(T), what);
    if (count > 0) std::memcpy(values.data(), bytes.data(), bytes.size());  // an empty vector's data() may be null
    return values;
  }
  std::uint64_t count(std::string_view what, std::uint64_t min_bytes_each) {
    const auto n = reader_.read<std::uint64_t>(what);
    if (n > reader_.remaining() / min_bytes_each) {
      fail("step plan message: {} claims {} entries but {} bytes remain", what, n, reader_.remaining());
    }
    return n;
  }
  std::uint64_t remaining() const { return reader_.remaining(); }

 private:
  ByteReader reader_;
};

}  // namespace

std::string encode_forward_plan(const StepPlan& plan) {
  Writer w;
  w.put(kMagic);
  w.put(kVersion);
  w.put_vector(plan.copies);
  w.put<std::uint64_t>(plan.sequences.size());
  for (const auto& s : plan.sequences) {
    w.put(s.id);
    w.put(s.start);
    w.put<std::uint8_t>(s.all_rows ? 1 : 0);
    w.put<std::int32_t>(s.score_top);
    w.put_vector(s.tokens);
    w.put_vector(s.block_table);
    w.put_vector(s.score_targets);
    w.put_vector(s.samplers);
  }
  return w.take();
}

StepPlan decode_forward_plan(std::string_view bytes) {
  Reader r(bytes);
  if (r.get<std::uint32_t>("magic") != kMagic) fail("step plan message: not a nibble step plan (bad magic)");
  if (const auto version = r.get<std::uint32_t>("version"); version != kVersion) {
    fail("step plan message: version {} from another nibble build; this rank reads version {}", version, kVersion);
  }
  StepPlan plan;
  plan.copies = r.get_vector<BlockCopy>("block copies");
  // The fixed part of one sequence is 8 + 8 + 1 + 4 + four lengths of 8 bytes.
  const auto sequences = r.count("sequences", 53);
  plan.sequences.resize(sequences);
  for (auto& s : plan.sequences) {
    s.id = r.get<SequenceId>("sequence id");
    s.start = r.get<std::int64_t>("sequence start");
    const auto all_rows = r.get<std::uint8_t>("all_rows");
    if (all_rows > 1) fail("step plan message: all_rows is {}, not 0 or 1", all_rows);
    s.all_rows = all_rows == 1;
    s.score_top = r.get<std::int32_t>("score_top");
    s.tokens = r.get_vector<TokenId>("tokens");
    s.block_table = r.get_vector<std::int32_t>("block table");
    s.score_targets = r.get_vector<TokenId>("score targets");
    s.samplers = r.get_vector<SamplerId>("samplers");
    if (s.start < 0) fail("step plan message: sequence {} starts at negative position {}", s.id, s.start);
  }
  if (r.remaining() != 0) fail("step plan message: {} bytes follow the plan", r.remaining());
  return plan;
}

}  // namespace nibble::engine

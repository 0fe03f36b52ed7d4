#include <gtest/gtest.h>

#include <string>

#include "common/error.h"
#include "engine/step_plan_codec.h"

namespace nibble::engine {
namespace {

StepPlan sample_plan() {
  StepPlan plan;
  plan.copies = {{3, 9, 5}, {4, 10, 16}};
  SamplerSetup setup;
  setup.id = 77;
  setup.prompt = {1, 2, 3};
  plan.new_samplers.push_back(setup);
  plan.finished_samplers = {12};
  ScheduledSequence prefill;
  prefill.id = 1;
  prefill.tokens = {1, 15043, 29892, 3186};
  prefill.start = 0;
  prefill.block_table = {0, 1};
  prefill.all_rows = true;
  prefill.score_targets = {15043, 29892, 3186, -1};
  prefill.score_top = 5;
  ScheduledSequence decode;
  decode.id = (std::uint64_t{1} << 40) + 5;
  decode.tokens = {42};
  decode.start = 1234567;
  decode.block_table = {7, 8, 9, 2147483647};
  decode.samplers = {77, 78};
  ScheduledSequence empty;  // a sequence with nothing yet (encoders must not assume tokens)
  empty.id = 9;
  plan.sequences = {prefill, decode, empty};
  return plan;
}

void expect_same_forward(const StepPlan& got, const StepPlan& want) {
  EXPECT_EQ(got.copies, want.copies);
  ASSERT_EQ(got.sequences.size(), want.sequences.size());
  for (std::size_t i = 0; i < want.sequences.size(); ++i) {
    const auto& g = got.sequences[i];
    const auto& w = want.sequences[i];
    EXPECT_EQ(g.id, w.id);
    EXPECT_EQ(g.tokens, w.tokens);
    EXPECT_EQ(g.start, w.start);
    EXPECT_EQ(g.block_table, w.block_table);
    EXPECT_EQ(g.all_rows, w.all_rows);
    EXPECT_EQ(g.score_targets, w.score_targets);
    EXPECT_EQ(g.score_top, w.score_top);
    EXPECT_EQ(g.samplers, w.samplers);
  }
}

TEST(StepPlanCodec, TheForwardPartRoundTripsAndSamplingStaysBehind) {
  const StepPlan plan = sample_plan();
  const StepPlan decoded = decode_forward_plan(encode_forward_plan(plan));
  expect_same_forward(decoded, plan);
  EXPECT_EQ(decoded.num_tokens(), plan.num_tokens());
  EXPECT_TRUE(decoded.new_samplers.empty()) << "sampler state lives on rank 0 only";
  EXPECT_TRUE(decoded.finished_samplers.empty());
  expect_same_forward(decode_forward_plan(encode_forward_plan(StepPlan{})), StepPlan{});
}

TEST(StepPlanCodec, EveryTruncationAndTrailingByteIsAClearError) {
  const std::string bytes = encode_forward_plan(sample_plan());
  for (std::size_t length = 0; length < bytes.size(); ++length) {
    EXPECT_THROW(decode_forward_plan(std::string_view(bytes).substr(0, length)), Error) << "length " << length;
  }
  EXPECT_THROW(decode_forward_plan(bytes + '\0'), Error);
}

TEST(StepPlanCodec, ForeignOrCorruptMessagesAreRefusedByName) {
  std::string bytes = encode_forward_plan(sample_plan());
  const auto message_of = [](const std::string& b) {
    try {
      decode_forward_plan(b);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_NE(message_of(bad_magic).find("bad magic"), std::string::npos);
  std::string other_version = bytes;
  other_version[4] = 2;
  EXPECT_NE(message_of(other_version).find("version 2 from another nibble build"), std::string::npos);
  // A length field claiming more elements than there are bytes: refused before
  // any allocation of that size.
  std::string huge = bytes;
  for (int i = 8; i < 16; ++i) huge[i] = '\xff';
  EXPECT_NE(message_of(huge).find("claims"), std::string::npos) << message_of(huge);
  // all_rows must be a boolean.
  StepPlan one;
  one.sequences.resize(1);
  std::string flag = encode_forward_plan(one);
  flag[8 + 8 + 8 + 8 + 8] = 2;  // magic+version, copies count, sequences count, id, start, then all_rows
  EXPECT_NE(message_of(flag).find("all_rows is 2"), std::string::npos) << message_of(flag);
}

}  // namespace
}  // namespace nibble::engine

// The serving benchmark's pure parts: percentiles as numpy computes them, the
// synthetic workload's shape and determinism, JSONL input and base URLs.
#include <gtest/gtest.h>

#include <fstream>

#include "loadgen/serving_benchmark.h"
#include "loadgen/stream_client.h"
#include "loadgen/workload.h"
#include "test_util.h"

namespace nibble::loadgen {
namespace {

TEST(Loadgen, PercentilesInterpolateLikeNumpy) {
  // numpy.percentile([1, 2, 3, 4, 10], [50, 99]) == [3.0, 9.76]
  const auto s = summarize({4, 1, 10, 3, 2});
  EXPECT_DOUBLE_EQ(s.mean, 4.0);
  EXPECT_DOUBLE_EQ(s.p50, 3.0);
  EXPECT_NEAR(s.p99, 9.76, 1e-12);
  EXPECT_DOUBLE_EQ(summarize({}).p99, 0.0);
}

TEST(Loadgen, TheSyntheticWorkloadIsSeededLongTailedAndClipped) {
  SyntheticWorkload workload;
  workload.count = 2000;
  workload.max_output_tokens = 300;
  const auto a = synthetic_requests(workload);
  const auto b = synthetic_requests(workload);
  ASSERT_EQ(a.size(), 2000u);
  std::vector<double> words, outputs;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].max_tokens, b[i].max_tokens);
    EXPECT_GE(a[i].max_tokens, 1);
    EXPECT_LE(a[i].max_tokens, 300);
    words.push_back(static_cast<double>(std::count(a[i].prompt.begin(), a[i].prompt.end(), ' ') + 1));
    outputs.push_back(static_cast<double>(a[i].max_tokens));
  }
  const auto w = summarize(words);
  EXPECT_NEAR(w.p50, workload.prompt_words_median, 0.1 * workload.prompt_words_median);
  EXPECT_GT(w.mean, w.p50) << "a long tail, as ShareGPT's";
  EXPECT_GT(w.p99, 3 * w.p50);
  EXPECT_NEAR(summarize(outputs).p50, workload.output_tokens_median, 0.1 * workload.output_tokens_median);
  workload.seed = 1;
  EXPECT_NE(synthetic_requests(workload)[0].prompt, a[0].prompt);
}

TEST(Loadgen, JsonlRequestsAndTheirErrors) {
  testing::TempDir dir;
  const auto path = dir.path() / "requests.jsonl";
  std::ofstream(path) << "{\"prompt\": \"Hello\", \"max_tokens\": 7}\n\n{\"prompt\": \"Bye\"}\n";
  const auto requests = read_jsonl_requests(path, 42);
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].prompt, "Hello");
  EXPECT_EQ(requests[0].max_tokens, 7);
  EXPECT_EQ(requests[1].max_tokens, 42);
  std::ofstream(path) << "{\"prompt\": \"ok\"}\n{\"text\": \"no prompt\"}\n";
  testing::expect_error([&] { read_jsonl_requests(path, 1); }, {"requests.jsonl:2", "prompt"});
  std::ofstream(path) << "{\"prompt\": \"ok\", \"max_tokens\": 0}\n";
  testing::expect_error([&] { read_jsonl_requests(path, 1); }, {":1", "max_tokens"});
}

TEST(Loadgen, BaseUrls) {
  const auto e = parse_base_url("http://localhost:9000/v1");
  EXPECT_EQ(e.host, "localhost");
  EXPECT_EQ(e.port, 9000);
  EXPECT_EQ(e.path, "/v1/completions");
  EXPECT_EQ(parse_base_url("http://10.0.0.2:8000").path, "/v1/completions");
  EXPECT_EQ(parse_base_url("http://h:1/openai/v1/").path, "/openai/v1/completions");
  testing::expect_error([] { parse_base_url("https://secure:443"); }, {"http://"});
}

}  // namespace
}  // namespace nibble::loadgen

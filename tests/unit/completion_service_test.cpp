// /v1/completions logic on the real stories260K model behind a serial scheduler:
// text equal to the reference greedy tokens, stop strings, streaming that adds up
// to the same text, n choices with seeds, logprobs, usage, errors and cancelling.
#include <gtest/gtest.h>

#include <condition_variable>
#include <algorithm>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include "scheduler/batch_scheduler.h"
#include "scheduler/batch_scheduler.h"
#include "server/completion_service.h"
#include "stories_model.h"
#include "test_util.h"

namespace nibble::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

using testing::reference_greedy_ids;

// Collects what the service sends; waits for the end.
class CollectingOutput : public ResponseOutput {
 public:
  void stream_event(std::string sse_text) override {
    const std::lock_guard lock(mutex_);
    events.push_back(std::move(sse_text));
    changed_.notify_all();
  }
  void finish(std::string json_text) override { end(json::parse(json_text)); }
  void fail(const ApiError& error) override { end(error.body()); }
  void stream_end() override { end(json()); }

  json wait() {
    std::unique_lock lock(mutex_);
    EXPECT_TRUE(changed_.wait_for(lock, 60s, [&] { return done_; }));
    return body;
  }
  void wait_for_events(std::size_t n) {
    std::unique_lock lock(mutex_);
    EXPECT_TRUE(changed_.wait_for(lock, 60s, [&] { return events.size() >= n || done_; }));
  }
  // The JSON of each "data:" event except [DONE].
  std::vector<json> chunks() {
    std::vector<json> out;
    for (const auto& e : events) {
      EXPECT_EQ(e.rfind("data: ", 0), 0u);
      EXPECT_EQ(e.substr(e.size() - 2), "\n\n");
      if (e != "data: [DONE]\n\n") out.push_back(json::parse(e.substr(6)));
    }
    return out;
  }

  std::vector<std::string> events;
  json body;

 private:
  void end(json value) {
    const std::lock_guard lock(mutex_);
    body = std::move(value);
    done_ = true;
    changed_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  bool done_ = false;
};

class CompletionServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    stories_ = new testing::StoriesModel();
    model_ = &stories_->model;
    tokenizer_ = stories_->tokenizer.get();
  }
  static void TearDownTestSuite() { delete stories_; }
  void SetUp() override {
    scheduler::BatchSchedulerOptions options;
    options.max_waiting = 16;
    options.num_blocks = 256;
    scheduler_ = std::make_unique<scheduler::BatchScheduler>(*model_, options);
    metrics_ = std::make_unique<ServerMetrics>("stories");
    service_ = std::make_unique<CompletionService>(*tokenizer_, *scheduler_, *metrics_, served(nullptr));
  }

  static ServedModel served(std::shared_ptr<const ChatTemplate> chat_template) {
    return {"stories", model_->config().max_position_embeddings, {2}, "fp", std::move(chat_template)};
  }

  static CompletionRequest request(json extra) {
    json body = {{"model", "stories"}, {"prompt", {1}}, {"temperature", 0}, {"max_tokens", 20}};
    if (!extra.is_null()) body.update(extra);
    RequestLimits limits;
    limits.vocab_size = 512;
    return parse_completion_request(body, limits);
  }

  json run(json extra) {
    auto output = std::make_shared<CollectingOutput>();
    service_->start(request(std::move(extra)), output);
    return output->wait();
  }

  static testing::StoriesModel* stories_;
  static Tokenizer* tokenizer_;
  static engine::Model* model_;
  std::unique_ptr<scheduler::BatchScheduler> scheduler_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<CompletionService> service_;
};
testing::StoriesModel* CompletionServiceTest::stories_ = nullptr;
Tokenizer* CompletionServiceTest::tokenizer_ = nullptr;
engine::Model* CompletionServiceTest::model_ = nullptr;

TEST_F(CompletionServiceTest, GreedyTextIsTheReferenceTokensDecoded) {
  const auto ids = reference_greedy_ids();
  const json body = run(json::object());
  ASSERT_EQ(body["object"], "text_completion") << body.dump();
  EXPECT_EQ(body["choices"][0]["text"], tokenizer_->decode(std::vector<TokenId>(ids.begin(), ids.begin() + 20), true));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"], json({{"prompt_tokens", 1}, {"completion_tokens", 20}, {"total_tokens", 21}}));
  EXPECT_EQ(body["model"], "stories");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
}

TEST_F(CompletionServiceTest, AStopStringEndsTheTextBeforeIt) {
  const std::string full = run(json::object())["choices"][0]["text"];
  const auto space = full.find(' ', 8);
  ASSERT_NE(space, std::string::npos) << full;
  const std::string stop = full.substr(space, 3);
  const json body = run({{"stop", stop}});
  EXPECT_EQ(body["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(body["usage"]["completion_tokens"].get<int>(), 20);
}

TEST_F(CompletionServiceTest, StreamedDeltasAddUpToTheSameText) {
  const std::string full = run(json::object())["choices"][0]["text"];
  auto output = std::make_shared<CollectingOutput>();
  service_->start(request({{"stream", true}, {"stream_options", {{"include_usage", true}}}}), output);
  output->wait();
  ASSERT_EQ(output->events.back(), "data: [DONE]\n\n");
  std::string text;
  const auto chunks = output->chunks();
  for (std::size_t i = 0; i + 1 < chunks.size(); ++i) {
    ASSERT_EQ(chunks[i]["choices"].size(), 1u);
    text += chunks[i]["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, full);
  EXPECT_EQ(chunks[chunks.size() - 2]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(chunks.back()["choices"], json::array());
  EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], 20);
}

TEST_F(CompletionServiceTest, SeededChoicesAreReproducibleAndDistinct) {
  const json extra = {{"temperature", 1.0}, {"n", 2}, {"seed", 11}, {"prompt", {{1}, {1, 365}}}};
  const json first = run(extra);
  ASSERT_EQ(first["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(first["choices"][i]["index"], i);
  EXPECT_EQ(run(extra)["choices"], first["choices"]);
  EXPECT_NE(first["choices"][0]["text"], first["choices"][1]["text"]);
  EXPECT_EQ(first["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(first["usage"]["completion_tokens"], 80);
}

TEST_F(CompletionServiceTest, TheTextContinuesThePromptWithItsFirstSpace) {
  // The prompt is BOS + "Once"; the greedy text goes on " upon a time": its first
  // token's SentencePiece space separates it from the prompt and is the text's (only
  // a whole text's start drops it), so echo's prompt + text is the decode of all.
  const auto ids = reference_greedy_ids();
  const std::vector<TokenId> prompt = {1, ids[0]};
  std::vector<TokenId> all = prompt;
  for (std::size_t i = 1; i <= 5; ++i) all.push_back(ids[i]);
  ASSERT_EQ(tokenizer_->token_bytes(ids[1]).front(), ' ');
  const std::string whole = tokenizer_->decode(all, true);
  const std::string head = tokenizer_->decode(prompt, true);
  ASSERT_EQ(whole.rfind(head, 0), 0u);
  const json body = run({{"prompt", prompt}, {"max_tokens", 5}, {"logprobs", 1}});
  EXPECT_EQ(body["choices"][0]["text"], whole.substr(head.size()));
  EXPECT_EQ(body["choices"][0]["logprobs"]["tokens"][0], tokenizer_->token_bytes(ids[1]));
  EXPECT_EQ(run({{"prompt", prompt}, {"max_tokens", 5}, {"echo", true}})["choices"][0]["text"], whole);
  // Streamed, the same text.
  auto output = std::make_shared<CollectingOutput>();
  service_->start(request({{"prompt", prompt}, {"max_tokens", 5}, {"stream", true}}), output);
  output->wait();
  std::string streamed;
  for (const auto& chunk : output->chunks()) {
    for (const auto& choice : chunk["choices"]) streamed += choice["text"].get<std::string>();
  }
  EXPECT_EQ(streamed, whole.substr(head.size()));
}

TEST_F(CompletionServiceTest, LogprobsCoverEveryToken) {
  const json body = run({{"logprobs", 3}, {"max_tokens", 10}});
  const json& lp = body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 10u);
  ASSERT_EQ(lp["token_logprobs"].size(), 10u);
  ASSERT_EQ(lp["top_logprobs"].size(), 10u);
  ASSERT_EQ(lp["text_offset"].size(), 10u);
  // Offsets point into the returned text, in order (the decoder drops the first
  // token's leading space, so they are not sums of the token strings).
  const std::string text = body["choices"][0]["text"];
  EXPECT_EQ(lp["text_offset"][0], 0);
  for (std::size_t i = 0; i < 10; ++i) {
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
    EXPECT_EQ(lp["top_logprobs"][i].size(), 3u);
    EXPECT_LE(lp["text_offset"][i].get<std::size_t>(), text.size());
    if (i > 0) {
      EXPECT_GE(lp["text_offset"][i].get<std::size_t>(), lp["text_offset"][i - 1].get<std::size_t>());
    }
  }
}

TEST_F(CompletionServiceTest, EchoWithLogprobsStreamsThePromptFirstAndScoresIt) {
  // The prompt is BOS + the first reference tokens: each is the model's greedy
  // choice, so its logprob is the best alternative's.
  const auto ids = reference_greedy_ids();
  json prompt = {1};
  for (int i = 0; i < 10; ++i) prompt.push_back(ids[static_cast<std::size_t>(i)]);
  const json fields = {{"prompt", prompt}, {"echo", true}, {"logprobs", 1}, {"max_tokens", 5}};
  const auto whole = run(fields);
  const auto& lp = whole["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 11u + 5u);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  for (std::size_t i = 1; i < 11; ++i) {
    const auto& top = lp["top_logprobs"][i];
    ASSERT_EQ(top.size(), 1u);
    EXPECT_EQ(top.begin().key(), lp["tokens"][i]) << "prompt token " << i << " is the greedy one";
    EXPECT_NEAR(top.begin().value().get<double>(), lp["token_logprobs"][i].get<double>(), 1e-6);
  }
  const std::string text = whole["choices"][0]["text"];
  for (std::size_t i = 0; i < lp["text_offset"].size(); ++i) {
    EXPECT_LE(lp["text_offset"][i].get<std::size_t>(), text.size());
  }

  auto output = std::make_shared<CollectingOutput>();
  json streamed_fields = fields;
  streamed_fields["stream"] = true;
  service_->start(request(streamed_fields), output);
  output->wait();
  std::string streamed;
  json tokens = json::array();
  for (const auto& chunk : output->chunks()) {
    for (const auto& choice : chunk["choices"]) {
      streamed += choice["text"].get<std::string>();
      if (!choice["logprobs"].is_null()) {
        for (const auto& t : choice["logprobs"]["tokens"]) tokens.push_back(t);
      }
    }
  }
  EXPECT_EQ(streamed, text) << "the echoed prompt is streamed first";
  EXPECT_EQ(tokens, lp["tokens"]);
}

TEST_F(CompletionServiceTest, BestOfReturnsTheCandidatesWithTheHighestLogprobPerToken) {
  // The same seeds as n=4 give the same four candidates; their logprobs say which two are best.
  const json sampling = {{"temperature", 1.0}, {"seed", 11}, {"max_tokens", 12}, {"prompt", {1, 403}}};
  json all_request = sampling;
  all_request.update({{"n", 4}, {"logprobs", 0}});
  const auto all = run(all_request);
  ASSERT_EQ(all["choices"].size(), 4u);
  std::vector<std::pair<double, std::string>> ranked;
  for (const auto& choice : all["choices"]) {
    double sum = 0;
    for (const auto& lp : choice["logprobs"]["token_logprobs"]) sum += lp.get<double>();
    ranked.emplace_back(sum / static_cast<double>(choice["logprobs"]["tokens"].size()), choice["text"]);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  EXPECT_NE(ranked.front().second, ranked.back().second) << "the candidates should differ";

  json best_request = sampling;
  best_request.update({{"n", 2}, {"best_of", 4}});
  const auto best = run(best_request);
  ASSERT_EQ(best["choices"].size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(best["choices"][i]["index"], i);
    EXPECT_EQ(best["choices"][i]["text"], ranked[static_cast<std::size_t>(i)].second) << "rank " << i;
    EXPECT_TRUE(best["choices"][i]["logprobs"].is_null()) << "logprobs were not asked for";
  }
  EXPECT_EQ(best["usage"]["completion_tokens"], all["usage"]["completion_tokens"]) << "every candidate counts";
}

// On the batch scheduler each prompt is computed once and forked into its choices;
// the response is still what the serial scheduler gives, choice by choice.
TEST_F(CompletionServiceTest, ChoicesForkedOnTheBatchSchedulerMatchTheSerialOnes) {
  const json extra = {{"temperature", 1.0}, {"n", 3}, {"seed", 7}, {"max_tokens", 12}, {"logprobs", 1},
                      {"echo", true}, {"ignore_eos", true}, {"prompt", {{1, 403, 29, 87, 300}, {1, 365}}}};
  const json serial = run(extra);
  scheduler::BatchSchedulerOptions options;
  options.block_size = 4;
  scheduler::BatchScheduler batch(*model_, options);
  CompletionService service(*tokenizer_, batch, *metrics_, served(nullptr));
  auto output = std::make_shared<CollectingOutput>();
  service.start(request(extra), output);
  const json batched = output->wait();
  ASSERT_EQ(batched["choices"].size(), 6u) << batched.dump();
  for (std::size_t i = 0; i < 6; ++i) {
    const json& got = batched["choices"][i];
    const json& want = serial["choices"][i];
    EXPECT_EQ(got["text"], want["text"]) << "choice " << i;
    EXPECT_EQ(got["logprobs"]["tokens"], want["logprobs"]["tokens"]) << "choice " << i;
    const auto& got_logprobs = got["logprobs"]["token_logprobs"];
    ASSERT_EQ(got_logprobs.size(), want["logprobs"]["token_logprobs"].size());
    for (std::size_t t = 1; t < got_logprobs.size(); ++t) {  // the first token has none
      EXPECT_NEAR(got_logprobs[t].get<double>(), want["logprobs"]["token_logprobs"][t].get<double>(), 1e-4);
    }
  }
  EXPECT_NE(batched["choices"][0]["text"], batched["choices"][1]["text"]);
  EXPECT_EQ(batched["usage"], serial["usage"]);
  // Each prompt once (5 + 2 tokens), then 11 decode tokens per choice (the first comes from the prompt).
  EXPECT_EQ(batch.stats().step_tokens, 5 + 2 + 6 * 11);
}

TEST_F(CompletionServiceTest, IgnoreEosGeneratesPastTheEndOfSequenceToken) {
  // A model whose end-of-sequence token is the 6th greedy token stops there...
  ServedModel model = served(nullptr);
  model.stop_tokens = {reference_greedy_ids()[5]};
  CompletionService service(*tokenizer_, *scheduler_, *metrics_, model);
  const auto run_on = [&](json extra) {
    auto output = std::make_shared<CollectingOutput>();
    service.start(request(std::move(extra)), output);
    return output->wait();
  };
  const auto stopped = run_on({{"max_tokens", 20}});
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(stopped["usage"]["completion_tokens"], 6);
  // ...unless the request says ignore_eos (vLLM's extension).
  const auto going_on = run_on({{"max_tokens", 20}, {"ignore_eos", true}});
  EXPECT_EQ(going_on["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(going_on["usage"]["completion_tokens"], 20);
}

TEST_F(CompletionServiceTest, ModelAndContextErrorsComeBeforeAnyWork) {
  try {
    service_->start(request({{"model", "other"}}), std::make_shared<CollectingOutput>());
    FAIL() << "expected a 404";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 404);
    EXPECT_EQ(e.param(), "model");
  }
  try {
    service_->start(request({{"max_tokens", 600}}), std::make_shared<CollectingOutput>());
    FAIL() << "expected a 400";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.code(), "context_length_exceeded");
  }
  EXPECT_EQ(scheduler_->load().waiting, 0);
}

TEST_F(CompletionServiceTest, CancellingEndsTheStream) {
  auto output = std::make_shared<CollectingOutput>();
  const auto running = service_->start(request({{"stream", true}, {"max_tokens", 400}}), output);
  output->wait_for_events(2);
  running->cancel();
  output->wait();
  EXPECT_EQ(output->events.back(), "data: [DONE]\n\n");
  EXPECT_LT(output->events.size(), 400u);
  const auto load = scheduler_->load();
  EXPECT_EQ(load.running + load.waiting, 0);
}

// A template in the style of Llama-2's: BOS, roles as words, and a refusal of roles
// it does not know, as real templates raise.
constexpr const char* kChatTemplate =
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

class ChatServiceTest : public CompletionServiceTest {
 protected:
  void SetUp() override {
    CompletionServiceTest::SetUp();
    chat_ = std::make_unique<CompletionService>(
        *tokenizer_, *scheduler_, *metrics_,
        served(std::make_shared<ChatTemplate>(kChatTemplate, tokenizer_->token_bytes(1), tokenizer_->token_bytes(2))));
  }
  static json chat_body(json extra) {
    json body = {{"model", "stories"},
                 {"messages", {{{"role", "system"}, {"content", "Tell a story."}},
                               {{"role", "user"}, {"content", "Once upon a time"}}}},
                 {"temperature", 0},
                 {"max_tokens", 24}};
    if (!extra.is_null()) body.update(extra);
    return body;
  }
  json run_chat(json extra, const std::shared_ptr<CollectingOutput>& output = std::make_shared<CollectingOutput>()) {
    RequestLimits limits;
    limits.vocab_size = 512;
    chat_->start(parse_chat_request(chat_body(std::move(extra)), limits), output);
    return output->wait();
  }
  std::unique_ptr<CompletionService> chat_;
};

TEST_F(ChatServiceTest, TheReplyIsTheCompletionOfTheRenderedConversation) {
  const auto prompt_ids = tokenizer_->encode("<s>system: Tell a story.\nuser: Once upon a time\nassistant:", false);
  ASSERT_EQ(prompt_ids.front(), 1) << "the template's BOS text must become the BOS token";
  const auto completion = run({{"prompt", prompt_ids}, {"max_tokens", 24}});
  const auto chat = run_chat(nullptr);
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], completion["choices"][0]["text"]);
  EXPECT_EQ(chat["choices"][0]["finish_reason"], completion["choices"][0]["finish_reason"]);
  EXPECT_EQ(chat["usage"]["prompt_tokens"], prompt_ids.size());
  EXPECT_EQ(chat["usage"], completion["usage"]);
}

TEST_F(ChatServiceTest, AStreamOpensEachChoiceWithTheRoleAndAddsUpToTheReply) {
  const auto whole = run_chat({{"n", 2}, {"seed", 7}, {"temperature", 0.8}});
  auto output = std::make_shared<CollectingOutput>();
  run_chat({{"n", 2}, {"seed", 7}, {"temperature", 0.8}, {"stream", true}, {"stream_options", {{"include_usage", true}}}},
           output);
  const auto chunks = output->chunks();
  ASSERT_GE(chunks.size(), 5u);
  EXPECT_EQ(output->events.back(), "data: [DONE]\n\n");
  std::map<int, std::string> content;
  std::map<int, int> events_per_choice;
  for (std::size_t i = 0; i + 1 < chunks.size(); ++i) {
    const auto& chunk = chunks[i];
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    ASSERT_EQ(chunk["choices"].size(), 1u);
    const auto& choice = chunk["choices"][0];
    const int index = choice["index"];
    if (events_per_choice[index]++ == 0) {
      EXPECT_EQ(choice["delta"], json({{"role", "assistant"}, {"content", ""}})) << "choice " << index;
    }
    if (choice["delta"].contains("content")) content[index] += choice["delta"]["content"].get<std::string>();
  }
  ASSERT_EQ(content.size(), 2u);
  for (int index = 0; index < 2; ++index) {
    EXPECT_EQ(content[index], whole["choices"][index]["message"]["content"]) << "choice " << index;
  }
  EXPECT_TRUE(chunks.back()["choices"].empty());
  EXPECT_EQ(chunks.back()["usage"], whole["usage"]);
}

TEST_F(ChatServiceTest, LogprobsListEveryTokenWithItsAlternatives) {
  const auto body = run_chat({{"logprobs", true}, {"top_logprobs", 3}});
  const auto& content = body["choices"][0]["logprobs"]["content"];
  EXPECT_EQ(content.size(), body["usage"]["completion_tokens"].get<std::size_t>());
  for (const auto& entry : content) {
    EXPECT_LE(entry["logprob"].get<double>(), 0.0);
    EXPECT_EQ(entry["top_logprobs"].size(), 3u);
    EXPECT_EQ(entry["token"], entry["top_logprobs"][0]["token"]) << "greedy picks the most likely token";
  }
}

TEST_F(ChatServiceTest, ATemplateThatRefusesTheConversationIsA400) {
  try {
    // "developer" reaches the template as "system", which it accepts.
    run_chat({{"messages", {{{"role", "developer"}, {"content", "x"}}, {{"role", "user"}, {"content", "hi"}}}}});
    run_chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 600}});
    FAIL() << "expected context_length_exceeded";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.code(), "context_length_exceeded");
  }
  auto refusing = std::make_shared<ChatTemplate>("{{ raise_exception('Conversation roles must alternate') }}", "", "");
  CompletionService service(*tokenizer_, *scheduler_, *metrics_, served(refusing));
  RequestLimits limits;
  limits.vocab_size = 512;
  try {
    service.start(parse_chat_request(chat_body(nullptr), limits), std::make_shared<CollectingOutput>());
    FAIL() << "expected a 400";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "messages");
    EXPECT_NE(std::string(e.what()).find("Conversation roles must alternate"), std::string::npos) << e.what();
  }
  try {
    service_->start(parse_chat_request(chat_body(nullptr), limits), std::make_shared<CollectingOutput>());
    FAIL() << "a model without a chat template must refuse chat";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.code(), "chat_template_missing");
  }
  EXPECT_EQ(scheduler_->load().waiting, 0);
}

// Constrained output through the real scheduler and runner: the text is one of the
// choices and ends at the end token; a grammar that is complete where no end token
// may follow (a model served without one) is a dead end, reported as a 400
// constraint_dead_end error, never as valid output.
TEST_F(CompletionServiceTest, ConstrainedOutputFollowsItsGrammarAndADeadEndIsAClearError) {
  const json body = run({{"guided_choice", {"yes", "no", "maybe"}}, {"temperature", 1.0}, {"seed", 3}});
  ASSERT_EQ(body["object"], "text_completion") << body.dump();
  const auto text = body["choices"][0]["text"].get<std::string>();
  EXPECT_TRUE(text == "yes" || text == "no" || text == "maybe") << text;
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");

  ServedModel no_end = served(nullptr);
  no_end.stop_tokens.clear();
  CompletionService service(*tokenizer_, *scheduler_, *metrics_, no_end);
  auto output = std::make_shared<CollectingOutput>();
  service.start(request({{"guided_choice", {"yes"}}}), output);
  const json error = output->wait();
  ASSERT_TRUE(error.contains("error")) << error.dump();
  EXPECT_EQ(error["error"]["code"], "constraint_dead_end");
  EXPECT_NE(error["error"]["message"].get<std::string>().find("allows no next token"), std::string::npos);
}

}  // namespace
}  // namespace nibble::server

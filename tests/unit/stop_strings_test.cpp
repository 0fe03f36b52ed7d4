// Stop strings over streamed text: the output ends right before the first stop
// string however the text is split into pieces, and no part of a stop string is
// ever sent.
#include <gtest/gtest.h>

#include <random>

#include "server/stop_strings.h"

namespace nibble::server {
namespace {

struct Streamed {
  std::string text;
  bool stopped = false;
  std::vector<std::string> sent;  // each push's output
};

Streamed stream(const std::vector<std::string>& stop, const std::vector<std::string>& pieces) {
  StopStringFilter filter(stop);
  Streamed out;
  for (const auto& piece : pieces) {
    const auto o = filter.push(piece);
    out.sent.push_back(o.text);
    out.text += o.text;
    if (o.stopped) {
      out.stopped = true;
      return out;
    }
  }
  out.text += filter.flush();
  return out;
}

TEST(StopStrings, WithoutStopStringsTextPassesThrough) {
  const auto s = stream({}, {"Once", " upon", " a time"});
  EXPECT_EQ(s.text, "Once upon a time");
  EXPECT_FALSE(s.stopped);
  EXPECT_EQ(s.sent, (std::vector<std::string>{"Once", " upon", " a time"}));
}

TEST(StopStrings, TheTextEndsRightBeforeTheStopString) {
  auto s = stream({"\n\n"}, {"Hello", " world\n", "\nmore"});
  EXPECT_TRUE(s.stopped);
  EXPECT_EQ(s.text, "Hello world");
  // The first "\n" was held back, never sent.
  EXPECT_EQ(s.sent, (std::vector<std::string>{"Hello", " world", ""}));
  s = stream({"world", "lo"}, {"hello world"});
  EXPECT_EQ(s.text, "hel");  // the first to complete wins
  s = stream({"b", "abb"}, {"caabb"});
  EXPECT_EQ(s.text, "caa");  // "b" completes before "abb", though "abb" starts first
  s = stream({"bc", "abc"}, {"xabcd"});
  EXPECT_EQ(s.text, "x");  // both complete together: the one that starts first
}

TEST(StopStrings, APartialMatchThatFailsIsSentLater) {
  auto s = stream({"###"}, {"a#", "#b", "c"});
  EXPECT_FALSE(s.stopped);
  EXPECT_EQ(s.text, "a##bc");
  EXPECT_EQ(s.sent, (std::vector<std::string>{"a", "##b", "c"}));
  s = stream({"END"}, {"abcE"});
  EXPECT_EQ(s.sent, (std::vector<std::string>{"abc"}));
  EXPECT_EQ(s.text, "abcE");  // flushed at the end
}

TEST(StopStrings, HeldTextNeverSplitsACharacter) {
  const auto s = stream({"\xC3\xA9!"}, {"caf\xC3\xA9", "?"});
  EXPECT_EQ(s.sent, (std::vector<std::string>{"caf", "\xC3\xA9?"}));
  EXPECT_FALSE(s.stopped);
}

TEST(StopStrings, NothingAfterTheStop) {
  StopStringFilter filter({"x"});
  EXPECT_TRUE(filter.push("axb").stopped);
  const auto after = filter.push("more");
  EXPECT_TRUE(after.stopped);
  EXPECT_TRUE(after.text.empty());
  EXPECT_TRUE(filter.flush().empty());
}

// Any text, any split, any stop strings: the output is the text up to the stop
// string that completes first, as if the text came one character at a time.
TEST(StopStrings, RandomSplitsAgreeWithFindingTheStopInTheWholeText) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> letter(0, 2);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int length = std::uniform_int_distribution<int>(0, 40)(rng);
    for (int i = 0; i < length; ++i) text += static_cast<char>('a' + letter(rng));
    std::vector<std::string> stop;
    const int stops = std::uniform_int_distribution<int>(1, 3)(rng);
    for (int i = 0; i < stops; ++i) {
      std::string s;
      const int n = std::uniform_int_distribution<int>(1, 4)(rng);
      for (int j = 0; j < n; ++j) s += static_cast<char>('a' + letter(rng));
      stop.push_back(s);
    }
    std::vector<std::string> pieces;
    for (std::size_t at = 0; at < text.size();) {
      const auto n = std::min<std::size_t>(text.size() - at, std::uniform_int_distribution<std::size_t>(1, 5)(rng));
      pieces.push_back(text.substr(at, n));
      at += n;
    }
    std::size_t first = std::string::npos;
    for (std::size_t end = 1; end <= text.size() && first == std::string::npos; ++end) {
      for (const auto& s : stop) {
        if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0) {
          first = std::min(first, end - s.size());
        }
      }
    }
    const auto result = stream(stop, pieces);
    std::string described = "text '" + text + "', stop";
    for (const auto& s : stop) described += " '" + s + "'";
    described += ", pieces";
    for (const auto& p : pieces) described += " '" + p + "'";
    ASSERT_EQ(result.text, text.substr(0, first)) << described;
    ASSERT_EQ(result.stopped, first != std::string::npos) << described;
  }
}

}  // namespace
}  // namespace nibble::server

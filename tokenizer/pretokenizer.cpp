#include "tokenizer/pretokenizer.h"

#include <re2/re2.h>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace nibble {
namespace {

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text decoded once into code points with their byte offsets, so the scanners can
// look ahead and back cheaply.
struct CodePoints {
  std::vector<char32_t> cp;
  std::vector<std::size_t> offset;  // offset[i] = byte start of cp[i]; offset[size] = text size

  explicit CodePoints(std::string_view text) {
    cp.reserve(text.size());
    offset.reserve(text.size() + 1);
    for (std::size_t pos = 0; pos < text.size();) {
      offset.push_back(pos);
      cp.push_back(unicode::next(text, pos));
    }
    offset.push_back(text.size());
  }
  std::size_t size() const { return cp.size(); }
};

bool is_other(char32_t c) { return !unicode::is_space(c) && !unicode::is_letter(c) && !unicode::is_number(c); }
bool is_newline(char32_t c) { return c == '\r' || c == '\n'; }

// Case-insensitive as Oniguruma folds: 's' also matches U+017F LATIN SMALL LETTER LONG S.
bool letter_is(char32_t c, char lower, bool fold) {
  if (c == static_cast<char32_t>(lower)) return true;
  if (!fold) return false;
  if (c == static_cast<char32_t>(lower - 'a' + 'A')) return true;
  return lower == 's' && c == 0x17F;
}

// Length in code points of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
std::size_t contraction(const CodePoints& t, std::size_t i, bool fold) {
  const std::size_t n = t.size();
  if (t.cp[i] != '\'' || i + 1 >= n) return 0;
  const char32_t a = t.cp[i + 1];
  if (letter_is(a, 's', fold) || letter_is(a, 't', fold) || letter_is(a, 'm', fold) || letter_is(a, 'd', fold)) return 2;
  if (i + 2 >= n) return 0;
  const char32_t b = t.cp[i + 2];
  if ((letter_is(a, 'r', fold) && letter_is(b, 'e', fold)) || (letter_is(a, 'v', fold) && letter_is(b, 'e', fold)) ||
      (letter_is(a, 'l', fold) && letter_is(b, 'l', fold)))
    return 3;
  return 0;
}

template <typename Pred>
std::size_t run_end(const CodePoints& t, std::size_t i, Pred pred) {
  while (i < t.size() && pred(t.cp[i])) ++i;
  return i;
}

// `\s+(?!\S)|\s+` at a whitespace code point i: the run, less its last character when
// a non-space follows and the run is longer than one (that character goes with the
// next word).
std::size_t trailing_space_end(const CodePoints& t, std::size_t i) {
  const std::size_t end = run_end(t, i, unicode::is_space);
  if (end < t.size() && end - i > 1) return end - 1;
  return end;
}

std::size_t gpt2_match(const CodePoints& t, std::size_t i) {
  const std::size_t n = t.size();
  const char32_t c = t.cp[i];
  if (const std::size_t len = contraction(t, i, false)) return i + len;
  const std::size_t j = (c == ' ' && i + 1 < n) ? i + 1 : i;  // the optional leading space
  if (unicode::is_letter(t.cp[j])) return run_end(t, j, unicode::is_letter);
  if (unicode::is_number(t.cp[j])) return run_end(t, j, unicode::is_number);
  if (is_other(t.cp[j])) return run_end(t, j, is_other);
  return trailing_space_end(t, i);
}

std::size_t llama3_match(const CodePoints& t, std::size_t i, std::size_t max_digits) {
  const std::size_t n = t.size();
  const char32_t c = t.cp[i];
  if (const std::size_t len = contraction(t, i, true)) return i + len;
  if (unicode::is_letter(c)) return run_end(t, i, unicode::is_letter);
  if (!is_newline(c) && !unicode::is_number(c) && i + 1 < n && unicode::is_letter(t.cp[i + 1]))
    return run_end(t, i + 1, unicode::is_letter);
  if (unicode::is_number(c)) {
    std::size_t j = i;
    while (j < n && j - i < max_digits && unicode::is_number(t.cp[j])) ++j;
    return j;
  }
  const std::size_t j = (c == ' ' && i + 1 < n) ? i + 1 : i;
  if (is_other(t.cp[j])) return run_end(t, run_end(t, j, is_other), is_newline);
  // c is whitespace here. `\s*[\r\n]+`: up to and including the run's last newline.
  const std::size_t end = run_end(t, i, unicode::is_space);
  for (std::size_t k = end; k > i; --k)
    if (is_newline(t.cp[k - 1])) return k;
  return trailing_space_end(t, i);
}

void scan(std::string_view text, std::vector<std::string_view>& out, SplitKind kind) {
  const CodePoints t(text);
  std::size_t i = 0;
  while (i < t.size()) {
    std::size_t end = i;
    switch (kind) {
      case SplitKind::Gpt2: end = gpt2_match(t, i); break;
      case SplitKind::Llama3: end = llama3_match(t, i, 3); break;
      case SplitKind::Qwen2: end = llama3_match(t, i, 1); break;
      case SplitKind::Digits:
      case SplitKind::EachDigit: {
        const bool digit = unicode::is_number(t.cp[i]);
        if (digit && kind == SplitKind::EachDigit) {
          end = i + 1;
        } else {
          end = run_end(t, i, [digit](char32_t c) { return unicode::is_number(c) == digit; });
        }
        break;
      }
      case SplitKind::Regex: break;
    }
    out.push_back(text.substr(t.offset[i], t.offset[end] - t.offset[i]));
    i = end;
  }
}

}  // namespace

std::string_view known_split_pattern(SplitKind kind) {
  switch (kind) {
    case SplitKind::Gpt2:
      return kGpt2Pattern;
    case SplitKind::Llama3:
      return kLlama3Pattern;
    case SplitKind::Qwen2:
      return kQwen2Pattern;
    default:
      return {};
  }
}

SplitKind classify_split_pattern(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return SplitKind::Gpt2;
  if (pattern == kLlama3Pattern) return SplitKind::Llama3;
  if (pattern == kQwen2Pattern) return SplitKind::Qwen2;
  return SplitKind::Regex;
}

Splitter::Splitter(SplitKind kind, std::string_view pattern) : kind_(kind) {
  if (kind != SplitKind::Regex) return;
  if (pattern.find("(?=") != std::string_view::npos || pattern.find("(?!") != std::string_view::npos ||
      pattern.find("(?<") != std::string_view::npos)
    fail("unsupported pre-tokenizer regex (lookaround is only known in the GPT-2, Llama-3 and Qwen2 patterns): {}",
         pattern);
  RE2::Options options;
  options.set_log_errors(false);
  // Wrapped in a group so FindAndConsume reports where each match starts.
  std::string wrapped(1, '(');
  wrapped.append(pattern);
  wrapped.push_back(')');
  regex_ = std::make_unique<re2::RE2>(wrapped, options);
  if (!regex_->ok()) fail("invalid pre-tokenizer regex {}: {}", pattern, regex_->error());
}

Splitter::~Splitter() = default;
Splitter::Splitter(Splitter&&) noexcept = default;
Splitter& Splitter::operator=(Splitter&&) noexcept = default;

void Splitter::split(std::string_view text, std::vector<std::string_view>& out) const {
  if (kind_ != SplitKind::Regex) {
    scan(text, out, kind_);
    return;
  }
  // HF "Isolated": each match is a piece, and so is each gap between matches.
  std::size_t done = 0;
  re2::StringPiece rest(text.data(), text.size());
  re2::StringPiece found;
  while (!rest.empty() && RE2::PartialMatch(rest, *regex_, &found)) {
    const std::string_view match(found.data(), found.size());
    const auto start = static_cast<std::size_t>(match.data() - text.data());
    if (match.empty()) {
      // Empty matches split nothing; step one character past them.
      std::size_t pos = start;
      if (pos >= text.size()) break;
      unicode::next(text, pos);
      rest = re2::StringPiece(text.data() + pos, text.size() - pos);
      continue;
    }
    if (start > done) out.push_back(text.substr(done, start - done));
    out.push_back(match);
    done = start + match.size();
    rest = re2::StringPiece(text.data() + done, text.size() - done);
  }
  if (done < text.size()) out.push_back(text.substr(done));
}

void split_all(const std::vector<Splitter>& splitters, std::string_view text, std::vector<std::string_view>& out) {
  if (text.empty()) return;
  if (splitters.empty()) {
    out.push_back(text);
    return;
  }
  std::vector<std::string_view> current{text};
  std::vector<std::string_view> next;
  for (const Splitter& splitter : splitters) {
    next.clear();
    for (std::string_view piece : current) splitter.split(piece, next);
    current.swap(next);
  }
  out.insert(out.end(), current.begin(), current.end());
}

}  // namespace nibble

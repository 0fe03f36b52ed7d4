#include "tokenizer/decoder.h"

#include "tokenizer/byte_level.h"
#include "tokenizer/unicode.h"

namespace nibble {
namespace {

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  if (pos == 0) return;
  out.append(s, pos);
  s = std::move(out);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void strip(std::string& s, const DecoderStep& step) {
  std::string ch;
  unicode::append_utf8(ch, step.strip_char);
  std::size_t begin = 0, end = s.size();
  for (std::size_t n = 0; n < step.strip_start && s.compare(begin, ch.size(), ch) == 0 && begin < end; ++n)
    begin += ch.size();
  for (std::size_t n = 0; n < step.strip_stop && end >= begin + ch.size() &&
                          s.compare(end - ch.size(), ch.size(), ch) == 0;
       ++n)
    end -= ch.size();
  s = s.substr(begin, end - begin);
}

}  // namespace

int parse_byte_token(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return -1;
  const int hi = hex_digit(token[3]), lo = hex_digit(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string Decoder::decode(std::span<const std::string_view> tokens) const {
  if (steps_.empty()) {
    // tokenizers joins with spaces when a tokenizer has no decoder.
    std::string joined;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i) joined += ' ';
      joined += tokens[i];
    }
    return unicode::to_valid_utf8(joined);
  }
  std::vector<std::string> parts(tokens.begin(), tokens.end());
  for (const DecoderStep& step : steps_) {
    switch (step.kind) {
      case DecoderStep::Kind::ByteLevel: {
        // All tokens become one byte string, made valid UTF-8 once at the end.
        std::string bytes;
        for (const std::string& part : parts) {
          if (auto decoded = byte_level::decode(part)) {
            bytes += *decoded;
          } else {
            bytes += part;
          }
        }
        parts.assign(1, unicode::to_valid_utf8(bytes));
        break;
      }
      case DecoderStep::Kind::Replace:
        for (std::string& part : parts) replace_all(part, step.from, step.to);
        break;
      case DecoderStep::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        std::size_t pending_tokens = 0;
        auto flush = [&] {
          if (pending_tokens == 0) return;
          if (unicode::to_valid_utf8(pending) == pending) {
            out.push_back(pending);
          } else {
            // tokenizers gives one U+FFFD per byte token of an invalid run.
            for (std::size_t i = 0; i < pending_tokens; ++i) out.emplace_back("\xEF\xBF\xBD");
          }
          pending.clear();
          pending_tokens = 0;
        };
        for (std::string& part : parts) {
          if (const int byte = parse_byte_token(part); byte >= 0) {
            pending += static_cast<char>(byte);
            ++pending_tokens;
          } else {
            flush();
            out.push_back(std::move(part));
          }
        }
        flush();
        parts = std::move(out);
        break;
      }
      case DecoderStep::Kind::Fuse: {
        std::string joined;
        for (const std::string& part : parts) joined += part;
        parts.assign(1, std::move(joined));
        break;
      }
      case DecoderStep::Kind::Strip:
        for (std::string& part : parts) strip(part, step);
        break;
      case DecoderStep::Kind::Metaspace:
        for (std::size_t i = 0; i < parts.size(); ++i)
          replace_all(parts[i], step.from, i == 0 && step.metaspace_prepends ? "" : " ");
        break;
    }
  }
  std::string result;
  for (const std::string& part : parts) result += part;
  return unicode::to_valid_utf8(result);
}

std::string Decoder::token_bytes(std::string_view token) const {
  std::string s(token);
  for (const DecoderStep& step : steps_) {
    switch (step.kind) {
      case DecoderStep::Kind::ByteLevel:
        if (auto decoded = byte_level::decode(s)) s = std::move(*decoded);
        break;
      case DecoderStep::Kind::Replace: replace_all(s, step.from, step.to); break;
      case DecoderStep::Kind::ByteFallback:
        if (const int byte = parse_byte_token(s); byte >= 0) s.assign(1, static_cast<char>(byte));
        break;
      case DecoderStep::Kind::Metaspace: replace_all(s, step.from, " "); break;
      case DecoderStep::Kind::Fuse:
      case DecoderStep::Kind::Strip: break;  // whole-sequence effects: see strips_leading_space()
    }
  }
  return s;
}

bool Decoder::strips_leading_space() const {
  for (const DecoderStep& step : steps_) {
    if (step.kind == DecoderStep::Kind::Strip && step.strip_char == ' ' && step.strip_start > 0) return true;
    if (step.kind == DecoderStep::Kind::Metaspace && step.metaspace_prepends) return true;
  }
  return false;
}

}  // namespace nibble

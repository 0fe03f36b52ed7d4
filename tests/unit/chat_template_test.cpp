// The Jinja interpreter and ChatTemplate: real chat templates against jinja2's own
// renders (tests/chat/make_template_fixtures.py, run by ctest as
// chat_template_fixtures), then the language features one by one, then hostile input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "common/error.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------
// Real templates against jinja2.

TEST(ChatTemplateReference, MatchesJinja2ByteForByte) {
  const fs::path path = fs::path(NIBBLE_CHAT_FIXTURES) / "cases.json";
  ASSERT_TRUE(fs::exists(path)) << path << " is missing (run the tests through ctest)";
  std::ifstream in(path);
  const Json cases = Json::parse(in);
  ASSERT_GE(cases.size(), 100u);
  size_t errors = 0;
  for (const Json& c : cases) {
    const std::string label = c.at("template").get<std::string>() + " / " + c.at("case").get<std::string>() +
                              (c.at("add_generation_prompt").get<bool>() ? " + generation prompt" : "");
    SCOPED_TRACE(label);
    try {
      ChatTemplate chat(c.at("source").get<std::string>(), c.at("bos"), c.at("eos"));
      chat.set_clock([](const std::string& format) { return format == "%d %b %Y" ? "26 Jul 2024" : format; });
      if (c.contains("error")) {
        ++errors;
        try {
          chat.render(c.at("messages"), c.at("add_generation_prompt"), c.at("extra"));
          ADD_FAILURE() << "jinja2 raised '" << c.at("error").get<std::string>() << "' but we rendered";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(c.at("error").get<std::string>()), std::string::npos) << e.what();
        }
      } else {
        EXPECT_EQ(chat.render(c.at("messages"), c.at("add_generation_prompt"), c.at("extra")),
                  c.at("expected").get<std::string>());
      }
    } catch (const Error& e) {
      ADD_FAILURE() << "unexpected error: " << e.what();
    }
  }
  EXPECT_GT(errors, 0u) << "the fixtures should include templates that raise";
}

// ---------------------------------------------------------------------------
// Language features (expected outputs checked against jinja2 3.1.6 with HF's settings).

std::string render(std::string_view source, const Json& variables = Json::object()) {
  return jinja::Template(source).render(variables);
}

std::string error_of(std::string_view source, const Json& variables = Json::object()) {
  try {
    render(source, variables);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Jinja, TextAndOutput) {
  EXPECT_EQ(render("plain text"), "plain text");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }}"), "a1None");
  EXPECT_EQ(render("{{ 1.0 }} {{ 1.5e3 }} {{ true }} {{ [1, 'a', {'b': none}] }}"), "1.0 1500.0 True [1, 'a', {'b': None}]");
  EXPECT_EQ(render("{{ \"tab\\tnew\\nline \\u00e9 \\x41\" }}"), "tab\tnew\nline é A");
  EXPECT_EQ(render("{# comment #}x"), "x");
  EXPECT_EQ(render("line\n"), "line");  // one trailing newline dropped, as jinja2 does
}

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render("a\n  {%- if true %}b{% endif -%}\n  c"), "abc");
  // trim_blocks: newline after a block tag goes; lstrip_blocks: indentation before it goes.
  EXPECT_EQ(render("{% if true %}\n    x\n    {% endif %}\ny"), "    x\ny");
  EXPECT_EQ(render("  {{ 'v' }}\n"), "  v");  // expressions are not lstripped or trimmed
  EXPECT_EQ(render("x {% if true %}y{% endif %}"), "x y");  // text before the tag on its line stays
  EXPECT_EQ(render("  {%+ if true %}y{% endif +%}\nz"), "  y\nz");
  EXPECT_EQ(render("{{ 'a' }}  {% if true %}b{% endif %}"), "a  b");  // the line did not start at the tag
  EXPECT_EQ(render("  {# c #}\nx"), "x");
}

TEST(Jinja, Conditionals) {
  const char* t = "{% if n > 2 %}big{% elif n == 2 %}two{% else %}small{% endif %}";
  EXPECT_EQ(render(t, {{"n", 3}}), "big");
  EXPECT_EQ(render(t, {{"n", 2}}), "two");
  EXPECT_EQ(render(t, {{"n", 1}}), "small");
  EXPECT_EQ(render("{{ 'y' if x else 'n' }}{{ 'z' if false }}", {{"x", ""}}), "n");
  EXPECT_EQ(render("{{ not a and b or 'c' }}", {{"a", false}, {"b", 0}}), "c");
}

TEST(Jinja, Loops) {
  const Json vars = {{"xs", {"a", "b", "c"}}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ x }}{% if loop.first %}F{% endif %}"
                   "{% if loop.last %}L{{ loop.length }}{% endif %};{% endfor %}",
                   vars),
            "10aF;21b;32cL3;");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", {{"d", {{"z", 1}, {"a", 2}}}}),
            "z=1,a=2,");
  EXPECT_EQ(render("{% for x in xs if x != 'b' %}{{ x }}{{ loop.length }}{% endfor %}", vars), "a2c2");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{% if x == 'c' %}{% break %}"
                   "{% endif %}{{ x }}{% endfor %}",
                   vars),
            "a");
  EXPECT_EQ(render("{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}"),
            "012531");
  // set inside a loop does not leak; namespace() carries state out.
  EXPECT_EQ(render("{% set x = 1 %}{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set x = 5 %}"
                   "{% set ns.n = ns.n + i %}{% endfor %}{{ x }} {{ ns.n }}"),
            "1 3");
}

TEST(Jinja, Macros) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('a') }} {{ greet('b', punct='?') }}"),
            "hi a! hi b?");
  EXPECT_EQ(render("{% set block %}in {{ 1 + 1 }}{% endset %}[{{ block }}]"), "[in 2]");
}

TEST(Jinja, Expressions) {
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }}"),
            "3 -4 2 3.5 2.0 1024 7");
  EXPECT_EQ(render("{{ 'ab' * 2 }} {{ [1] + [2] }} {{ 'a' + 'b' }}"), "abab [1, 2] ab");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' not in d }}", {{"d", {{"k", 1}}}}),
            "True True True True");
  EXPECT_EQ(render("{{ m.role }} {{ m['content'] }} {{ xs[-1] }} {{ xs.0 }}",
                   {{"m", {{"role", "user"}, {"content", "hi"}}}, {"xs", {1, 2, 3}}}),
            "user hi 3 1");
  EXPECT_EQ(render("{{ xs[1:] }} {{ xs[::-1] }} {{ xs[:-1] }} {{ 'héllo'[1:3] }} {{ 'abc'[::-1] }}",
                   {{"xs", {1, 2, 3}}}),
            "[2, 3] [3, 2, 1] [1, 2] él cba");
  EXPECT_EQ(render("{{ {'a': 1, 'b': [true]} | tojson }}"), "{\"a\": 1, \"b\": [true]}");
}

TEST(Jinja, UndefinedValues) {
  EXPECT_EQ(render("[{{ missing }}]{% if missing %}x{% endif %}{{ missing is defined }}{{ missing is undefined }}"),
            "[]FalseTrue");
  EXPECT_EQ(render("{{ m.nothing is defined }}{{ m.nothing | length }}{{ missing | default('d') }}", {{"m", Json::object()}}),
            "False0d");
  EXPECT_NE(error_of("{{ missing.attr }}").find("'missing' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ missing + 1 }}").find("undefined"), std::string::npos);
}

// Using an Undefined fails with jinja2's message for how it came about (the reference
// fixtures require it, e.g. Llama-2's `content.strip()` on a list of text parts).
TEST(Jinja, UndefinedErrorsUseJinja2sWords) {
  const Json vars = {{"xs", {1}}, {"d", Json::object()}, {"s", "ab"}};
  EXPECT_EQ(render("[{{ xs.strip }}]{{ xs.strip is defined }}", vars), "[]False");
  const std::pair<const char*, const char*> cases[] = {  // template, jinja2's message
      {"{{ xs.strip() }}", "'list object' has no attribute 'strip'"},
      {"{{ s.nope() }}", "'str object' has no attribute 'nope'"},
      {"{{ d.k + 1 }}", "'dict object' has no attribute 'k'"},
      {"{{ d['it\\'s'] + 1 }}", "'dict object' has no attribute \"it's\""},
      {"{{ d.k.strip() }}", "'dict object' has no attribute 'k'"},
      {"{{ xs['k'] + 1 }}", "'list object' has no attribute 'k'"},
      {"{{ none.x + 1 }}", "'None' has no attribute 'x'"},
      {"{{ true.x + 1 }}", "'bool object' has no attribute 'x'"},
      {"{% set ns = namespace() %}{{ ns.x + 1 }}", "'jinja2.utils.Namespace object' has no attribute 'x'"},
      {"{{ xs[5] + 1 }}", "list object has no element 5"},
      {"{{ xs[none] + 1 }}", "list object has no element None"},
      {"{{ s[9] + 1 }}", "str object has no element 9"},
      {"{{ missing() }}", "'missing' is undefined"},
      {"{{ (1 if false) + 1 }}",
       "the inline if-expression on line 1 evaluated to false and no else section was defined."},
      {"{% macro m(a) %}{{ a + 1 }}{% endmacro %}{{ m() }}", "parameter 'a' was not provided"},
      {"{{ ([] | first) + 1 }}", "No first item, sequence was empty."},
      {"{{ ([] | last) + 1 }}", "No last item, sequence was empty."},
  };
  for (const auto& [source, message] : cases) EXPECT_EQ(error_of(source, vars), std::string("line 1: ") + message) << source;
}

TEST(Jinja, Tests) {
  EXPECT_EQ(render("{{ none is none }}{{ 's' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ [] is sequence }}"
                   "{{ 1.5 is number }}{{ true is true }}{{ 0 is false }}{{ 3 is odd }}{{ 4 is divisibleby 2 }}"
                   "{{ 'a' is not string }}"),
            "TrueTrueTrueTrueTrueTrueTrueFalseTrueTrueFalse");
}

TEST(Jinja, Filters) {
  const Json people = {{"people", {{{"name", "ann"}, {"role", "user"}}, {{"name", "bob"}, {"role", "assistant"}}}}};
  EXPECT_EQ(render("{{ '  x  ' | trim }}|{{ [1, 2] | length }}|{{ 'héllo' | count }}|{{ [1, 2] | first }}"
                   "|{{ 'ab' | last }}|{{ 'Ab' | lower }}{{ 'Ab' | upper }}|{{ [1, 2] | join(', ') }}"),
            "x|2|5|1|b|abAB|1, 2");
  EXPECT_EQ(render("{{ people | selectattr('role', 'equalto', 'user') | map(attribute='name') | list }}"
                   "{{ people | rejectattr('role', 'equalto', 'user') | list | length }}",
                   people),
            "['ann']1");
  EXPECT_EQ(render("{{ 'hello world' | capitalize }} {{ 'hello world' | title }} {{ 'aXa' | replace('a', 'b') }}"),
            "Hello world Hello World bXb");
  EXPECT_EQ(render("{{ 3 | string ~ '1' | int }} {{ '42' | int + 1 }} {% for k, v in {'a': 1} | items %}{{ k }}{{ v }}{% endfor %}"), "31 43 a1");
  EXPECT_EQ(render("{{ {'a': [1, 2]} | tojson(indent=2) }}"), "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
  EXPECT_EQ(render("{{ 'é\"\\n' | tojson }} {{ 'x' | safe }} {{ none | default('n', true) }}"), "\"é\\\"\\n\" x n");
}

TEST(Jinja, StringAndDictMethods) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'a\\n'.rstrip() }}|{{ 'a,b'.split(',') }}"
                   "|{{ ' a  b '.split() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}"
                   "|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}|{{ 'aa'.replace('a', 'b', 1) }}|{{ 'hi there'.title() }}"),
            "a b|axx|a|['a', 'b']|['a', 'b']|TrueTrue|ABab|ba|Hi There");
  const Json d = {{"d", {{"k", "v"}}}};
  EXPECT_EQ(render("{{ d.get('k') }} {{ d.get('x', 'dflt') }} {{ d.get('x') }} {{ d.keys() | list }} {{ d.values() | list }}", d),
            "v dflt None ['k'] ['v']");
}

// ---------------------------------------------------------------------------
// Errors and hostile templates: always an Error naming the line, never a crash.

TEST(Jinja, SyntaxErrorsNameTheLine) {
  EXPECT_NE(error_of("a\n{{ x ").find("line 2"), std::string::npos);
  EXPECT_NE(error_of("a\nb\n{% if x %}never closed").find("line 3"), std::string::npos);
  EXPECT_NE(error_of("{# open comment").find("comment"), std::string::npos);
  EXPECT_NE(error_of("\n{{ x | no_such_filter }}").find("line 2: unknown filter 'no_such_filter'"), std::string::npos);
  EXPECT_NE(error_of("{{ x is no_such_test }}").find("unknown test"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 + }}").find("line 1"), std::string::npos);
  EXPECT_NE(error_of("{% endfor %}").find("endfor"), std::string::npos);
  EXPECT_NE(error_of("{% frobnicate %}").find("frobnicate"), std::string::npos);
  EXPECT_NE(error_of("{{ 'unterminated }}").find("unterminated string"), std::string::npos);
}

TEST(Jinja, HostileTemplatesFailCleanly) {
  EXPECT_NE(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}").find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(5000, '-') + "1 }}").find("nested too deeply"), std::string::npos);
  std::string nots;
  for (int i = 0; i < 5000; ++i) nots += "not ";
  EXPECT_NE(error_of("{{ " + nots + "1 }}").find("nested too deeply"), std::string::npos);
  std::string deep_ifs;
  for (int i = 0; i < 5000; ++i) deep_ifs += "{% if true %}";
  EXPECT_NE(error_of(deep_ifs).find("nested too deeply"), std::string::npos);
  EXPECT_NE(error_of("{% for i in range(100000000) %}{% endfor %}").find("loop iterations"), std::string::npos);
  EXPECT_NE(error_of("{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(10) %}{% endfor %}"
                     "{% endfor %}{% endfor %}")
                .find("loop iterations"),
            std::string::npos);
  EXPECT_NE(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}").find("too large"), std::string::npos);
  EXPECT_NE(error_of("{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' * 1000 }}"
                     "{% endfor %}")
                .find("output exceeds"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 1 // 0 }}").find("zero"), std::string::npos);
  EXPECT_NE(error_of("{{ 9223372036854775807 + 1 }}").find("overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ 3 ** 100 }}").find("overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ 99999999999999999999 }}").find("out of range"), std::string::npos);
  EXPECT_EQ(render("{{ (-9223372036854775807 - 1) // 3 }} {{ 1 ** 1000000000 }} {{ (-1) ** 1000000001 }}"),
            "-3074457345618258603 1 -1");
  EXPECT_NE(error_of("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(error_of("{% for x in 5 %}{% endfor %}").find("not iterable"), std::string::npos);
}

TEST(ChatTemplate, RaiseExceptionCarriesTheTemplatesMessage) {
  ChatTemplate chat("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
                    "<s>", "</s>");
  EXPECT_EQ(chat.render(nlohmann::json::array({{{"role", "user"}, {"content", "x"}}}), false), "ok");
  try {
    chat.render(nlohmann::json::array({{{"role", "system"}, {"content", "x"}}}), false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("first must be user"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ChatTemplate("{% if %}", "", ""), Error);
}

TEST(ChatTemplate, ProvidesTokensGenerationPromptAndExtras) {
  ChatTemplate chat("{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
                    "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ strftime_now('%Y') }}{{ flag }}",
                    "<s>", "</s>");
  chat.set_clock([](const std::string&) { return "2024"; });
  const Json messages = Json::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_EQ(chat.render(messages, true, {{"flag", 7}}), "<s>[user:hi]></s>20247");
  EXPECT_EQ(chat.render(messages, false), "<s>[user:hi]</s>2024");
}

}  // namespace
}  // namespace nibble

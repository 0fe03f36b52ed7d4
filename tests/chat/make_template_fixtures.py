#!/usr/bin/env python3
"""Test-time reference renders for chat_template_test (ctest runs it as `chat_template_fixtures`).

Renders real Hugging Face chat templates with jinja2 exactly as transformers does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
strftime_now, tojson) over a set of conversations, and writes OUT/cases.json:

  [{"template": name, "source": template text, "bos": ..., "eos": ...,
    "messages": [...], "add_generation_prompt": bool, "extra": {...},
    "expected": text}            # or "error": message, where jinja2 raised
   ...]

Templates (the TEMPLATES table): files of two PyPI releases, found through PyPI's JSON API,
downloaded once, sha256-checked and cached in CACHE; only the members named are read, and
Python sources are parsed with `ast`, never run:
  * llama-cpp-python==0.3.36 sdist: ten .jinja files from llama.cpp's models/templates, the
    Mistral-7B-Instruct v0.1/v0.2 constants of llama_cpp/llama_chat_format.py and two
    Mistral-7B-Instruct-v0.2 and one Phi-3-mini case of llama.cpp's tests/test-chat-template.cpp;
  * transformers==4.40.2 wheel: Llama-2-chat's template, LlamaTokenizer.default_chat_template
    (since removed), rebuilt as the property builds it;
and SmolLM2-135M-Instruct's own `tokenizer.chat_template` read with `gguf` from the bundled
model (a missing model fails: scripts/get-model provides it). Versions: tests/requirements.txt.

  python3 tests/chat/make_template_fixtures.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --cache build/download_cache --out build/chat_template_fixtures
"""
import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = "26 Jul 2024"


@dataclass(frozen=True)
class Dist:
    """One file of a PyPI release, pinned by sha256."""
    project: str
    version: str
    filename: str
    sha256: str
    local_copies: tuple = ()  # a copy already on this machine saves the download


LLAMA_CPP_PYTHON = Dist("llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
                        "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", ("/tmp/lcp/lcp.tar.gz",))
# A transformers release that still has LlamaTokenizer.default_chat_template (Llama-2-chat's template).
TRANSFORMERS = Dist("transformers", "4.40.2", "transformers-4.40.2-py3-none-any.whl",
                    "71cb94301ec211a2e1d4b8c8d18dcfaa902dfa00a089dceca167a8aa265d6f2d")

LCP_ROOT = "llama_cpp_python-0.3.36/"
JINJA_DIR = LCP_ROOT + "vendor/llama.cpp/models/templates/"
LCP_CHAT_FORMAT = LCP_ROOT + "llama_cpp/llama_chat_format.py"
LCP_TEMPLATE_TESTS = LCP_ROOT + "vendor/llama.cpp/tests/test-chat-template.cpp"
LLAMA_TOKENIZER = "transformers/models/llama/tokenization_llama.py"


# Extractors: member text -> template text. Python sources are parsed with ast, never run.
def whole_file(text):
    return text


def python_constant(name):
    """A module-level `NAME = "literal"`."""
    def extract(text):
        values = [node.value.value for node in ast.parse(text).body
                  if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)]
        if len(values) != 1:
            raise ValueError(f"{len(values)} string assignments to {name}")
        return values[0]
    return extract


CPP_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
CPP_TEST_CASE = re.compile(r'/\* \.name= \*/ "((?:[^"\\\n]|\\.)*)",\s*/\* \.template_str= \*/ "((?:[^"\\\n]|\\.)*)",')


def cpp_test_case(name):
    """template_str of the llama.cpp test case NAME: one plain C++ literal with simple escapes only."""
    def extract(text):
        matches = [m.group(2) for m in CPP_TEST_CASE.finditer(text) if m.group(1) == name]
        if len(matches) != 1:
            raise ValueError(f"{len(matches)} test cases named {name!r}")
        def unescape(m):
            if m.group(1) not in CPP_ESCAPES:
                raise ValueError(f"unexpected C++ escape \\{m.group(1)}")
            return CPP_ESCAPES[m.group(1)]
        return re.sub(r"\\(.)", unescape, matches[0])
    return extract


# What LlamaTokenizer.default_chat_template does after `template = (...)`; the property's
# statements must be exactly these (compared as ASTs) or the extraction refuses.
LLAMA2_PROPERTY_TAIL = """
template = template.replace("USE_DEFAULT_PROMPT", "true" if self.use_default_system_prompt else "false")
default_message = DEFAULT_SYSTEM_PROMPT.replace("\\n", "\\\\n").replace("'", "\\\\'")
template = template.replace("DEFAULT_SYSTEM_MESSAGE", default_message)
return template
"""


def llama2_default_template(use_default_system_prompt):
    """LlamaTokenizer.default_chat_template as the property returns it for this flag."""
    def extract(text):
        module = ast.parse(text)
        tokenizer = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "LlamaTokenizer")
        prop = next(n for n in tokenizer.body if isinstance(n, ast.FunctionDef) and n.name == "default_chat_template")
        def is_docstring_or_log(n):
            return isinstance(n, ast.Expr) and (isinstance(n.value, ast.Constant) or (
                isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute)
                and getattr(n.value.func.value, "id", None) == "logger"))
        body = [n for n in prop.body if not is_docstring_or_log(n)]
        first = body[0]  # template = ("..." "...")
        if not (isinstance(first, ast.Assign) and [getattr(t, "id", None) for t in first.targets] == ["template"]
                and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)):
            raise ValueError("default_chat_template does not start with template = <string literal>")
        if ast.dump(ast.Module(body=body[1:], type_ignores=[])) != ast.dump(ast.parse(LLAMA2_PROPERTY_TAIL)):
            raise ValueError("default_chat_template's substitutions are not the ones reproduced here")
        default_prompt = python_constant("DEFAULT_SYSTEM_PROMPT")(text)
        template = first.value.value.replace("USE_DEFAULT_PROMPT", "true" if use_default_system_prompt else "false")
        default_message = default_prompt.replace("\n", "\\n").replace("'", "\\'")
        return template.replace("DEFAULT_SYSTEM_MESSAGE", default_message)
    return extract


LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
S_TAGS = ("<s>", "</s>")


def jinja_file(name, tokens):
    return name, (LLAMA_CPP_PYTHON, JINJA_DIR + name + ".jinja", whole_file, tokens)


# name -> (dist, member, extractor, (bos, eos)). Content given as text parts is kept only
# where the template accepts it.
TEMPLATES = dict([
    jinja_file("meta-llama-Llama-3.1-8B-Instruct", LLAMA3),
    jinja_file("meta-llama-Llama-3.2-3B-Instruct", LLAMA3),
    jinja_file("Qwen-Qwen2.5-7B-Instruct", ("", "<|im_end|>")),
    jinja_file("Qwen-Qwen3-0.6B", ("", "<|im_end|>")),  # <think> handling, tools
    jinja_file("microsoft-Phi-3.5-mini-instruct", ("<s>", "<|endoftext|>")),
    # Phi-3-mini-4k-instruct's first template (user/assistant only, bos first).
    ("microsoft-Phi-3-mini-4k-instruct-original",
     (LLAMA_CPP_PYTHON, LCP_TEMPLATE_TESTS, cpp_test_case("Phi-3-mini"), ("<s>", "<|endoftext|>"))),
    jinja_file("mistralai-Mistral-Nemo-Instruct-2407", S_TAGS),
    jinja_file("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", DEEPSEEK),
    jinja_file("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", DEEPSEEK),
    jinja_file("HuggingFaceTB-SmolLM3-3B", ("", "<|im_end|>")),
    # Gemma's turns (<start_of_turn>user / model), BOS written by the template itself.
    jinja_file("google-gemma-2-2b-it", ("<bos>", "<eos>")),
    # llama-cpp-python's copies of the official tokenizer_config.json templates
    ("mistralai-Mistral-7B-Instruct-v0.1",
     (LLAMA_CPP_PYTHON, LCP_CHAT_FORMAT, python_constant("MISTRAL_INSTRUCT_CHAT_TEMPLATE"), S_TAGS)),
    ("mistralai-Mistral-7B-Instruct-v0.2",  # also Mixtral-8x7B-Instruct-v0.1's
     (LLAMA_CPP_PYTHON, LCP_CHAT_FORMAT, python_constant("MIXTRAL_INSTRUCT_CHAT_TEMPLATE"), S_TAGS)),
    ("mistralai-Mistral-7B-Instruct-v0.2-pre-v1",  # see SAME_TEXT
     (LLAMA_CPP_PYTHON, LCP_TEMPLATE_TESTS,
      cpp_test_case("mistralai/Mistral-7B-Instruct-v0.2 (NOTE: Old pre-v1 without a system prompt)"), S_TAGS)),
    ("mistralai-Mistral-7B-Instruct-v0.2-v1",  # the later revision, with an optional system message
     (LLAMA_CPP_PYTHON, LCP_TEMPLATE_TESTS,
      cpp_test_case("mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)"), S_TAGS)),
    # Llama-2-chat checkpoints set use_default_system_prompt to false; true is the old default.
    ("meta-llama-Llama-2-7b-chat", (TRANSFORMERS, LLAMA_TOKENIZER, llama2_default_template(False), S_TAGS)),
    ("meta-llama-Llama-2-7b-chat-default-system-prompt",
     (TRANSFORMERS, LLAMA_TOKENIZER, llama2_default_template(True), S_TAGS)),
])
# Two independent copies of one template, compared as a check on both extractions.
SAME_TEXT = {"mistralai-Mistral-7B-Instruct-v0.2-pre-v1": "mistralai-Mistral-7B-Instruct-v0.2"}
SMOLLM2 = ("SmolLM2-135M-Instruct", "<|im_start|>", "<|im_end|>")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dist, cache):
    """DIST's file, sha256-checked, downloaded through PyPI's JSON API into CACHE once."""
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, dist.filename)
    if os.path.exists(path) and sha256_of(path) == dist.sha256:
        return path
    for local in dist.local_copies:
        if os.path.exists(local) and sha256_of(local) == dist.sha256:
            shutil.copyfile(local, path)
            return path
    # The project endpoint lists every release's files (some mirrors lack the per-version one).
    index = f"https://pypi.org/pypi/{dist.project}/json"
    partial = path + ".part"
    try:
        with urllib.request.urlopen(index, timeout=60) as r:
            files = json.load(r)["releases"].get(dist.version, [])
        urls = [u["url"] for u in files if u["filename"] == dist.filename]
        if not urls:
            sys.exit(f"PyPI lists no {dist.filename} for {dist.project} {dist.version}")
        url = urllib.parse.urljoin(index, urls[0])  # mirrors may answer with relative links
        with urllib.request.urlopen(url, timeout=600) as r, open(partial, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as e:
        sys.exit(f"cannot download {dist.filename} from PyPI ({e}); offline? place a copy "
                 f"(sha256 {dist.sha256}) at {path}")
    actual = sha256_of(partial)
    if actual != dist.sha256:
        os.remove(partial)
        sys.exit(f"{dist.filename} sha256 {actual}, expected {dist.sha256}")
    os.replace(partial, path)
    return path


def read_members(archive, names):
    """{name: text} for the NAMES in an sdist (.tar.gz) or wheel (.whl); nothing else is unpacked."""
    found = {}
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as wheel:
            for name in set(names) & set(wheel.namelist()):
                found[name] = wheel.read(name).decode("utf-8")
    else:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # streamed
                if member.name in names:
                    found[member.name] = tar.extractfile(member).read().decode("utf-8")
    missing = set(names) - set(found)
    if missing:
        sys.exit(f"{archive} lacks {sorted(missing)}")
    return found


def read_templates(cache):
    """{name: (source, bos, eos)} for TEMPLATES."""
    members = {}
    for dist in {dist for dist, *_ in TEMPLATES.values()}:
        names = {member for d, member, *_ in TEMPLATES.values() if d == dist}
        members.update({(dist, name): text for name, text in read_members(fetch(dist, cache), names).items()})
    templates = {}
    for name, (dist, member, extract, (bos, eos)) in TEMPLATES.items():
        try:
            templates[name] = (extract(members[dist, member]), bos, eos)
        except (ValueError, StopIteration, IndexError) as e:
            sys.exit(f"{name}: cannot extract the template from {dist.filename}:{member}: {e!r}")
    return templates


def read_gguf_template(path):
    if not os.path.exists(path):
        sys.exit(f"{path} not found: run scripts/get-model")
    import gguf
    reader = gguf.GGUFReader(path)
    field = reader.get_field("tokenizer.chat_template")
    if field is None:
        sys.exit(f"{path} has no tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def make_environment():
    """The environment transformers' render_jinja_template builds."""
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: FIXED_NOW if fmt == "%d %b %Y" else fmt
    return env


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                        "celsius": {"type": "boolean"}},
                       "required": ["city"]},
    },
}
TOOL_CALL = {"role": "assistant", "content": "",
             "tool_calls": [{"id": "call9abcd", "type": "function",
                             "function": {"name": "get_weather", "arguments": {"city": "Paris", "celsius": True}}}]}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call9abcd", "name": "get_weather", "content": "{\"temp\": 21.5}"}


def conversations(thinking):
    """(label, messages, extra) triples; content parts come as a separate label."""
    system = {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."}
    user = {"role": "user", "content": "What is the capital of France?"}
    answer = "Paris."
    if thinking:
        answer = "<think>\nThe user asks about France. It is Paris.\n</think>\n\nParis."
    assistant = {"role": "assistant", "content": answer}
    reasoned = {"role": "assistant", "content": "Paris.", "reasoning_content": "\nFrance's capital.\n"}
    follow_up = {"role": "user", "content": "And of Italy? Say \"Rome\" in 'quotes' & tabs\t{{ not jinja }}"}
    cases = [
        ("system_user", [system, user], {}),
        ("user_only", [user], {}),
        ("multi_turn", [user, assistant, follow_up], {}),
        ("system_multi_turn", [system, user, assistant, follow_up], {}),
        ("ends_with_assistant", [system, user, assistant], {}),
        ("not_alternating", [user, user], {}),
        ("unicode", [{"role": "user", "content": "Grüße, 世界! 🌍  trailing spaces  "}], {}),
        ("empty_content", [{"role": "user", "content": ""}], {}),
        ("text_parts", [{"role": "user", "content": [{"type": "text", "text": "Describe "},
                                                     {"type": "text", "text": "a cat."}]}], {}),
        ("thinking_off", [system, user], {"enable_thinking": False}),
        ("no_think_system", [{"role": "system", "content": "Be brief. /no_think"}, user, assistant], {}),
        ("tools", [system, user], {"tools": [WEATHER_TOOL]}),
        ("tool_call", [user, TOOL_CALL, TOOL_RESULT], {"tools": [WEATHER_TOOL]}),
        ("tool_call_no_tools", [user, TOOL_CALL, TOOL_RESULT, {"role": "assistant", "content": "Sunny."}], {}),
    ]
    if thinking:
        # Reasoning given apart from the content (Qwen3 renders it inside <think>), in
        # the last turn and in an earlier one, and a tool call made while thinking.
        cases += [
            ("reasoning_content_last", [system, user, reasoned], {}),
            ("reasoning_content_earlier", [user, reasoned, follow_up], {}),
            ("thinking_tool_call", [user, {**TOOL_CALL, "content": answer}, TOOL_RESULT, TOOL_RESULT,
                                    {"role": "assistant", "content": answer}], {"tools": [WEATHER_TOOL]}),
        ]
    return cases


def render(env, source, bos, eos, messages, add_generation_prompt, extra):
    template = env.from_string(source)
    return template.render(messages=messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=add_generation_prompt, **extra)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True, help="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--cache", required=True, help="where the downloaded PyPI files are kept between runs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    templates = read_templates(args.cache)
    for copy, original in SAME_TEXT.items():  # rendered once
        if templates.pop(copy) != templates[original]:
            sys.exit(f"{copy} and {original} should be the same template")
    templates[SMOLLM2[0]] = (read_gguf_template(args.gguf), SMOLLM2[1], SMOLLM2[2])

    env = make_environment()
    cases = []
    for name, (source, bos, eos) in sorted(templates.items()):
        thinking = name.startswith(("deepseek", "Qwen-Qwen3"))
        for label, messages, extra in conversations(thinking):
            for add_generation_prompt in (True, False):
                case = {"template": name, "case": label, "source": source, "bos": bos, "eos": eos,
                        "messages": messages, "add_generation_prompt": add_generation_prompt, "extra": extra}
                try:
                    case["expected"] = render(env, source, bos, eos, messages, add_generation_prompt, extra)
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                except TypeError:
                    if label != "text_parts":
                        raise
                    continue  # this template concatenates content as a string: parts unsupported
                cases.append(case)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    errors = sum("error" in c for c in cases)
    print(f"{len(cases)} cases ({errors} expected errors) from {len(templates)} templates, jinja2 {jinja2.__version__}")


if __name__ == "__main__":
    main()

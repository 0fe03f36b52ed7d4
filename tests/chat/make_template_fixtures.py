#!/usr/bin/env python3
"""Test-time reference renders for chat_template_test (ctest runs it as `chat_template_fixtures`).

Renders real Hugging Face chat templates with jinja2 exactly as transformers does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
strftime_now, tojson) over a set of conversations, and writes OUT/cases.json:

  [{"template": name, "source": template text, "bos": ..., "eos": ...,
    "messages": [...], "add_generation_prompt": bool, "extra": {...},
    "expected": text}            # or "error": message, where jinja2 raised
   ...]

Templates: seven from llama.cpp's models/templates (vendored in the PyPI sdist of
llama-cpp-python==0.3.36, found through PyPI's JSON API, downloaded once, sha256-checked and
cached in CACHE; only the .jinja members are read) and SmolLM2-135M-Instruct's own
`tokenizer.chat_template` read with `gguf` from the bundled model (a missing model
fails: scripts/get-model provides it). Versions: tests/requirements.txt.

  python3 tests/chat/make_template_fixtures.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --cache build/chat_cache --out build/chat_template_fixtures
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_LOCAL_COPIES = ["/tmp/lcp/lcp.tar.gz"]  # a copy already on this machine saves the download
TEMPLATE_DIR = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/models/templates/"
FIXED_NOW = "26 Jul 2024"

# name -> (bos, eos); content given as text parts is kept only where the template accepts it
TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>"),
}
SMOLLM2 = ("SmolLM2-135M-Instruct", "<|im_start|>", "<|im_end|>")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache):
    """The sha256-checked sdist, downloaded into CACHE once."""
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"llama_cpp_python-{SDIST_VERSION}.tar.gz")
    if os.path.exists(path) and sha256_of(path) == SDIST_SHA256:
        return path
    for local in SDIST_LOCAL_COPIES:
        if os.path.exists(local) and sha256_of(local) == SDIST_SHA256:
            shutil.copyfile(local, path)
            return path
    # The project endpoint lists every release's files (some mirrors lack the per-version one).
    index = "https://pypi.org/pypi/llama-cpp-python/json"
    with urllib.request.urlopen(index, timeout=60) as r:
        files = json.load(r)["releases"].get(SDIST_VERSION, [])
    sdists = [u for u in files if u["packagetype"] == "sdist"]
    if not sdists:
        sys.exit(f"PyPI lists no sdist for llama-cpp-python {SDIST_VERSION}")
    partial = path + ".part"
    url = urllib.parse.urljoin(index, sdists[0]["url"])  # mirrors may answer with relative links
    with urllib.request.urlopen(url, timeout=600) as r, open(partial, "wb") as f:
        shutil.copyfileobj(r, f)
    actual = sha256_of(partial)
    if actual != SDIST_SHA256:
        os.remove(partial)
        sys.exit(f"llama-cpp-python sdist sha256 {actual}, expected {SDIST_SHA256}")
    os.replace(partial, path)
    return path


def read_templates(sdist):
    wanted = {TEMPLATE_DIR + name + ".jinja": name for name in TEMPLATES}
    found = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:  # streamed: nothing else is unpacked
            if member.name in wanted:
                found[wanted[member.name]] = tar.extractfile(member).read().decode("utf-8")
    missing = set(TEMPLATES) - set(found)
    if missing:
        sys.exit(f"{sdist} lacks templates: {sorted(missing)}")
    return found


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
    return cases


def render(env, source, bos, eos, messages, add_generation_prompt, extra):
    template = env.from_string(source)
    return template.render(messages=messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=add_generation_prompt, **extra)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True, help="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--cache", required=True, help="where the sdist is kept between runs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    templates = {name: (source, *TEMPLATES[name]) for name, source in read_templates(fetch_sdist(args.cache)).items()}
    templates[SMOLLM2[0]] = (read_gguf_template(args.gguf), SMOLLM2[1], SMOLLM2[2])

    env = make_environment()
    cases = []
    for name, (source, bos, eos) in sorted(templates.items()):
        thinking = name.startswith("deepseek")
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

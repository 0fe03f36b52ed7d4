"""schemathesis hooks for e2e_schemathesis (loaded through SCHEMATHESIS_HOOKS).

Requests carrying a field whose validity no JSON Schema can state are left out of
generation: a JSON Schema to enforce (response_format json_schema, guided_json, the Responses
API's text.format json_schema), a
regex (guided_regex), a GBNF grammar (guided_grammar), forced tool calls
(tool_choice "required" or a named function: the functions' parameter schemas are
compiled, and a named function must be one of `tools`), and tool lists that repeat
a name. /openapi.json describes their shapes; the server answers a 400 naming what
it cannot enforce, which tests/unit/grammar_test.cpp, server_test and
e2e_structured_output check. Every other field is generated as before.
"""
import schemathesis

SEMANTIC_FIELDS = ("guided_json", "guided_regex", "guided_grammar")


@schemathesis.hook
def filter_body(context, body):
    if not isinstance(body, dict):
        return True
    if any(body.get(field) is not None for field in SEMANTIC_FIELDS):
        return False
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return False
    text = body.get("text")  # the Responses API's text.format
    if isinstance(text, dict) and isinstance(text.get("format"), dict) and text["format"].get("type") == "json_schema":
        return False
    tool_choice = body.get("tool_choice")
    if tool_choice == "required" or isinstance(tool_choice, dict):
        return False
    tools = body.get("tools")
    if isinstance(tools, list):
        names = [t["function"].get("name") if isinstance(t.get("function"), dict) else t.get("name")
                 for t in tools if isinstance(t, dict)]
        if len(names) != len(set(map(str, names))):
            return False
    return True

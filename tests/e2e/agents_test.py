"""Agent frameworks against `nibble serve` on the bundled SmolLM2, as their users call them:
LangChain's `ChatOpenAI(...).with_structured_output(PydanticModel)` (method json_schema,
LangChain's default, which sends `response_format` json_schema; and function_calling, which
sends the schema as a tool with a named `tool_choice`), each returning a validated Pydantic
object for every seeded prompt; LiteLLM's `completion(model="openai/...", tools=...)` with
`tool_choice` required and named, every call's arguments valid against its function's
schema, and an `auto` round trip (call -> tool result message -> answer).

Runs with the venv of scripts/make-agents-venv (tests/e2e/requirements-agents.txt), which
ctest uses when it exists; nothing here needs the network (LiteLLM's cost map is the one it
ships, its telemetry is off).
"""
import os

# Before litellm is imported: its bundled cost map, not the one it would fetch, and no
# telemetry or callbacks. LangChain: no tracing.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_TELEMETRY"] = "False"
os.environ["LANGCHAIN_TRACING_V2"] = "false"
os.environ["LANGSMITH_TRACING"] = "false"
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)

import enum  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import unittest  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Annotated, List  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import warnings  # noqa: E402

import httpx  # noqa: E402
import jsonschema  # noqa: E402
import litellm  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from nibble_server import ServerTestCase, SmolLM2Server  # noqa: E402

litellm.telemetry = False
litellm.drop_params = False  # an unsupported parameter is an error, not silently dropped

SEEDS = range(6)
MAX_TOKENS = 256


class Colour(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Person(BaseModel):
    """A person."""
    name: str = Field(max_length=32, description="the person's name")
    age: int = Field(description="age in years")
    verified: bool


class Car(BaseModel):
    """A car and its owners."""
    make: str = Field(max_length=24)
    colour: Colour  # an enum in $defs, reached by $ref
    # Every string bounded: at temperature 0.8 a 135M model can loop inside an unbounded
    # string ("AG-AG-AG-...") until max_tokens, which tests the model, not the server.
    owners: List[Annotated[str, Field(max_length=24)]] = Field(max_length=3)


PROMPTS = {
    Person: "Invent a person: their name, age and whether they are verified.",
    Car: "Describe a car: its make, colour and up to three owners.",
}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]


def schema_of(name):
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


class Agents(SmolLM2Server, ServerTestCase):
    server_args = ("--max-num-seqs", "8")

    @classmethod
    def setUpClass(cls):
        # LiteLLM's lazy imports make pydantic warn about LiteLLM's own TypedDicts (here,
        # as unittest's runner resets the filters set at import).
        warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
        super().setUpClass()

    def chat_model(self, seed, sent):
        """A ChatOpenAI on the server; the bodies it posts are appended to `sent`."""
        def record(request):
            sent.append(json.loads(request.content))

        client = httpx.Client(event_hooks={"request": [record]}, timeout=300)
        self.addCleanup(client.close)
        return ChatOpenAI(base_url=f"{self.server.base_url}/v1", api_key="unused", model=self.model_name,
                          temperature=0.8, seed=seed, max_tokens=MAX_TOKENS, max_retries=0, http_client=client)

    # --- LangChain ---

    def structured(self, method):
        """with_structured_output(model, method=...) for both models and every seed; the results."""
        def one(job):
            model, seed = job
            kwargs = {} if method is None else {"method": method}
            sent = []
            runnable = self.chat_model(seed, sent).with_structured_output(model, include_raw=True, **kwargs)
            out = runnable.invoke(PROMPTS[model])
            self.assertEqual(len(sent), 1)
            return model, seed, sent[0], out

        jobs = [(model, seed) for model in (Person, Car) for seed in SEEDS]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, jobs))
        self.assertEqual(len(results), 2 * len(SEEDS))
        for model, seed, body, out in results:
            with self.subTest(method=method, model=model.__name__, seed=seed):
                # What LangChain sent: the schema as response_format, or as the one tool
                # that tool_choice names.
                self.assertEqual(body["seed"], seed)
                if method == "function_calling":
                    self.assertNotIn("response_format", body)
                    self.assertEqual([t["function"]["name"] for t in body["tools"]], [model.__name__])
                    self.assertEqual(body["tool_choice"], {"type": "function", "function": {"name": model.__name__}})
                else:
                    self.assertEqual(body["response_format"]["type"], "json_schema", body)
                    self.assertEqual(body["response_format"]["json_schema"]["name"], model.__name__)
                    self.assertNotIn("tools", body)
                raw = out["raw"]
                self.assertIsNone(out["parsing_error"], raw)
                self.assertIsInstance(out["parsed"], model, raw)
                if method == "function_calling":
                    # The schema went as a tool that tool_choice named: one call, to it.
                    self.assertEqual([call["name"] for call in raw.tool_calls], [model.__name__], raw)
                    arguments = raw.tool_calls[0]["args"]
                    self.assertEqual(raw.response_metadata.get("finish_reason"), "tool_calls", raw)
                else:
                    self.assertEqual(raw.response_metadata.get("finish_reason"), "stop", raw)
                    arguments = json.loads(raw.content)
                # LangChain validated it; the schema the server enforced agrees too.
                jsonschema.validate(arguments, model.model_json_schema())
                self.assertEqual(out["parsed"], model.model_validate(arguments))
        # Sampling, not one answer repeated: seeds give different objects.
        for model in (Person, Car):
            objects = {out["parsed"].model_dump_json() for m, _, _, out in results if m is model}
            self.assertGreater(len(objects), 1, model.__name__)
        return results

    def test_langchain_with_structured_output_default_json_schema(self):
        self.structured(None)

    def test_langchain_with_structured_output_json_schema(self):
        self.structured("json_schema")

    def test_langchain_with_structured_output_function_calling(self):
        self.structured("function_calling")

    # --- LiteLLM ---

    def litellm_completion(self, messages, **kwargs):
        return litellm.completion(model=f"openai/{self.model_name}", api_base=f"{self.server.base_url}/v1",
                                  api_key="unused", messages=messages, tools=TOOLS, max_tokens=MAX_TOKENS,
                                  num_retries=0, timeout=300, **kwargs)

    def test_litellm_required_and_named_tool_choice_give_schema_valid_arguments(self):
        named = {"type": "function", "function": {"name": "add"}}

        def one(job):
            choice, seed = job
            response = self.litellm_completion(
                [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}],
                tool_choice=choice, temperature=0.8, seed=seed)
            return choice, seed, response.choices[0]

        jobs = [("required", seed) for seed in SEEDS] + [(named, seed) for seed in SEEDS]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, jobs))
        self.assertEqual(len(results), 2 * len(SEEDS))
        for choice, seed, result in results:
            with self.subTest(choice=choice, seed=seed):
                self.assertEqual(result.finish_reason, "tool_calls", result.message)
                self.assertTrue(result.message.tool_calls, result.message)
                for call in result.message.tool_calls:
                    self.assertTrue(call.id.startswith("call_"), call)
                    self.assertEqual(call.type, "function")
                    if choice == "required":
                        self.assertIn(call.function.name, ("get_weather", "add"))
                    else:
                        self.assertEqual(call.function.name, "add")
                    jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))

    def test_litellm_auto_round_trip_with_a_tool_result(self):
        question = [{"role": "user", "content": "What is the weather in Oslo?"}]
        first = self.litellm_completion(question, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        temperature=0)
        self.assertEqual(first.choices[0].finish_reason, "tool_calls")
        call = first.choices[0].message.tool_calls[0]
        self.assertEqual(call.function.name, "get_weather")
        jsonschema.validate(json.loads(call.function.arguments), schema_of("get_weather"))
        # The assistant's message as LiteLLM returned it goes back as it is, then the tool result.
        messages = question + [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 3, "sky": "snow"})},
        ]
        final = self.litellm_completion(messages, tool_choice="auto", temperature=0)
        choice = final.choices[0]
        self.assertIn(choice.finish_reason, ("stop", "length", "tool_calls"), choice)
        if choice.finish_reason == "tool_calls":
            for c in choice.message.tool_calls:
                self.assertIn(c.function.name, ("get_weather", "add"))
                self.assertIsInstance(json.loads(c.function.arguments), dict)
        else:
            self.assertIsInstance(choice.message.content, str)
            self.assertTrue(choice.message.content.strip(), choice)
        # The call and its result reached the prompt: it is longer than the question's by
        # at least the tool result's tokens.
        self.assertGreater(final.usage.prompt_tokens, first.usage.prompt_tokens + 8,
                           (first.usage, final.usage))
        self.assertGreater(final.usage.completion_tokens, 0)


if __name__ == "__main__":
    unittest.main()

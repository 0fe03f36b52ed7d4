"""Structured outputs and tool calls through the official `openai` SDK against
`nibble serve` on the bundled SmolLM2: `chat.completions.parse` with three Pydantic
models (20 seeded samples each, every one must parse and validate), `json_object`
mode, streamed equal to non-streamed under greedy decoding, vLLM's guided_choice /
guided_regex / guided_grammar / guided_json, schemas the server cannot enforce
refused with a 400 that names the keyword; tool_choice required / named always
giving schema-valid arguments, streamed tool-call deltas reassembling to the same
calls, and an auto round trip (call -> tool result -> answer). SmolLM2's template
renders no tools, so the server describes them in a system message (hermes format).
"""
import enum
import json
import re
import unittest
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, List, Optional

import jsonschema
import openai
from pydantic import BaseModel, Field

from nibble_server import ServerTestCase, SmolLM2Server

SAMPLES = 20
MAX_TOKENS = 320


class Person(BaseModel):
    """Flat."""
    name: str = Field(max_length=32)
    age: int
    verified: bool


class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Pet(BaseModel):
    name: str = Field(max_length=24)
    species: Color  # an enum in $defs, reached by $ref
    legs: int


class Owner(BaseModel):
    """Nested, with enums and lists."""
    name: str = Field(max_length=32)
    favourite: Color
    pets: List[Pet] = Field(max_length=3)
    # Bounded strings: an unbounded one may be sampled to max_tokens, which no
    # grammar prevents (it happened once int8 activations moved the samples).
    nicknames: List[Annotated[str, Field(max_length=24)]] = Field(max_length=2)


class Event(BaseModel):
    """Optional fields (nullable in the SDK's strict schema)."""
    title: str = Field(max_length=40)
    location: Optional[str] = Field(default=None, max_length=32)
    attendees: Optional[int] = None


PROMPTS = {
    Person: "Invent a person. Answer in JSON with their name, age and whether they are verified.",
    Owner: "Describe a pet owner and their pets in JSON.",
    Event: "Describe a birthday party as JSON with a title, a location and the number of attendees.",
}


class StructuredOutputs(SmolLM2Server, ServerTestCase):
    server_args = ("--max-num-seqs", "16")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.client = openai.OpenAI(base_url=f"{cls.server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)

    def messages(self, text):
        return [{"role": "user", "content": text}]

    def test_parse_returns_valid_objects_for_three_pydantic_models(self):
        def one(model, seed):
            completion = self.client.chat.completions.parse(
                model=self.model_name, messages=self.messages(PROMPTS[model]), response_format=model,
                temperature=0.8, seed=seed, max_tokens=MAX_TOKENS)
            choice = completion.choices[0]
            return model, seed, choice.finish_reason, choice.message.content, choice.message.parsed

        jobs = [(model, seed) for model in (Person, Owner, Event) for seed in range(SAMPLES)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(lambda job: one(*job), jobs))
        self.assertEqual(len(results), 3 * SAMPLES)
        for model, seed, finish_reason, content, parsed in results:
            with self.subTest(model=model.__name__, seed=seed):
                self.assertEqual(finish_reason, "stop", content)
                self.assertIsInstance(parsed, model, content)
                # The SDK parsed it; the schema the server enforced agrees too.
                jsonschema.validate(json.loads(content), model.model_json_schema())
        # Sampling, not one answer repeated: seeds give different objects.
        for model in (Person, Owner, Event):
            texts = {content for m, _, _, content, _ in results if m is model}
            self.assertGreater(len(texts), SAMPLES // 2, model.__name__)

    def test_json_object_mode_always_parses(self):
        def one(seed):
            completion = self.client.chat.completions.create(
                model=self.model_name, messages=self.messages("List three fruits and their colours as JSON."),
                response_format={"type": "json_object"}, temperature=0.7, seed=seed, max_tokens=MAX_TOKENS)
            return completion.choices[0]

        with ThreadPoolExecutor(max_workers=10) as pool:
            choices = list(pool.map(one, range(10)))
        for choice in choices:
            if choice.finish_reason == "length":
                continue  # free-form JSON may run past max_tokens: cut short, and says so
            self.assertEqual(choice.finish_reason, "stop")
            self.assertIsInstance(json.loads(choice.message.content), dict, choice.message.content)
        self.assertGreaterEqual(sum(c.finish_reason == "stop" for c in choices), 5)

    def test_streamed_equals_non_streamed_under_greedy(self):
        schema = Owner.model_json_schema()
        kwargs = dict(model=self.model_name, messages=self.messages(PROMPTS[Owner]), temperature=0,
                      max_tokens=MAX_TOKENS,
                      response_format={"type": "json_schema", "json_schema": {"name": "Owner", "schema": schema}})
        whole = self.client.chat.completions.create(**kwargs).choices[0].message.content
        pieces, finish = [], None
        for chunk in self.client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        self.assertEqual("".join(pieces), whole)
        self.assertEqual(finish, "stop")
        Owner.model_validate_json(whole)

    def test_guided_extensions_on_completions(self):
        def complete(**extra):
            return self.client.completions.create(model=self.model_name, prompt="The answer is", max_tokens=24,
                                                  temperature=0.9, seed=3, extra_body=extra).choices[0]

        choice = complete(guided_choice=["yes", "no", "maybe"])
        self.assertIn(choice.text, ["yes", "no", "maybe"])
        self.assertEqual(choice.finish_reason, "stop")
        choice = complete(guided_regex=r"[0-9]{3}-[a-z]{2,4}")
        self.assertRegex(choice.text, r"^[0-9]{3}-[a-z]{2,4}$")
        choice = complete(guided_grammar='root ::= "(" [a-c]+ ("," [a-c]+){0,2} ")"')
        self.assertRegex(choice.text, r"^\([a-c]+(,[a-c]+){0,2}\)$")
        choice = complete(guided_json={"type": "object", "properties": {"n": {"type": "integer"}},
                                       "required": ["n"], "additionalProperties": False})
        self.assertIsInstance(json.loads(choice.text)["n"], int)

    def test_unenforceable_schemas_are_refused_by_name(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(
                model=self.model_name, messages=self.messages("hi"), max_tokens=8,
                response_format={"type": "json_schema", "json_schema": {
                    "name": "n", "schema": {"type": "integer", "minimum": 3}}})
        body = caught.exception.body
        self.assertEqual(body["param"], "response_format.json_schema.schema")
        self.assertIn("'minimum'", body["message"])
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.completions.create(model=self.model_name, prompt="x", max_tokens=8,
                                           extra_body={"guided_regex": "(a)\\1"})
        self.assertIn("back-references", caught.exception.body["message"])

    # --- tools ---

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

    def schema_of(self, name):
        return next(t["function"]["parameters"] for t in self.TOOLS if t["function"]["name"] == name)

    def test_required_and_named_tool_choice_always_give_schema_valid_arguments(self):
        def one(args):
            choice, seed = args
            completion = self.client.chat.completions.create(
                model=self.model_name, messages=self.messages("What is the weather in Paris, and what is 2 + 3?"),
                tools=self.TOOLS, tool_choice=choice, temperature=0.8, seed=seed, max_tokens=MAX_TOKENS)
            return choice, completion.choices[0]

        named = {"type": "function", "function": {"name": "add"}}
        jobs = [("required", seed) for seed in range(8)] + [(named, seed) for seed in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, jobs))
        for choice, result in results:
            with self.subTest(choice=choice):
                self.assertEqual(result.finish_reason, "tool_calls", result.message)
                self.assertTrue(result.message.tool_calls)
                for call in result.message.tool_calls:
                    self.assertTrue(call.id.startswith("call_"))
                    self.assertEqual(call.type, "function")
                    if choice != "required":
                        self.assertEqual(call.function.name, "add")
                    jsonschema.validate(json.loads(call.function.arguments), self.schema_of(call.function.name))

    def test_streamed_tool_call_deltas_reassemble_to_the_same_calls(self):
        kwargs = dict(model=self.model_name, messages=self.messages("Add 40 and 2."), tools=self.TOOLS,
                      tool_choice="required", temperature=0, max_tokens=MAX_TOKENS)
        whole = self.client.chat.completions.create(**kwargs).choices[0]
        calls, finish = {}, None
        for chunk in self.client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            for piece in delta.tool_calls or []:
                entry = calls.setdefault(piece.index, {"name": "", "arguments": "", "id": None})
                if piece.id:
                    entry["id"] = piece.id
                if piece.function and piece.function.name:
                    entry["name"] += piece.function.name
                if piece.function and piece.function.arguments:
                    entry["arguments"] += piece.function.arguments
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(finish, "tool_calls")
        self.assertEqual([(c["name"], c["arguments"]) for _, c in sorted(calls.items())],
                         [(c.function.name, c.function.arguments) for c in whole.message.tool_calls])
        self.assertTrue(all(c["id"] for c in calls.values()))

    def test_auto_round_trip_renders_and_runs(self):
        first = self.client.chat.completions.create(
            model=self.model_name, messages=self.messages("What is the weather in Oslo?"), tools=self.TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=MAX_TOKENS)
        call = first.choices[0].message.tool_calls[0]
        messages = self.messages("What is the weather in Oslo?") + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 3, "sky": "snow"})},
        ]
        final = self.client.chat.completions.create(model=self.model_name, messages=messages, tools=self.TOOLS,
                                                    tool_choice="auto", temperature=0, max_tokens=48)
        choice = final.choices[0]
        self.assertIn(choice.finish_reason, ("stop", "length", "tool_calls"))
        if choice.finish_reason == "tool_calls":
            for c in choice.message.tool_calls:
                json.loads(c.function.arguments)
        else:
            self.assertIsInstance(choice.message.content, str)
        # tool_choice none: plain text, never parsed as calls.
        plain = self.client.chat.completions.create(model=self.model_name, messages=messages, tools=self.TOOLS,
                                                    tool_choice="none", temperature=0, max_tokens=16)
        self.assertIsNone(plain.choices[0].message.tool_calls)

    # --- the Responses API (stateless) ---

    def test_responses_api_plain_streamed_json_schema_and_function_tools(self):
        plain = dict(model=self.model_name, input="Say hello to the reader.", max_output_tokens=16, temperature=0)
        whole = self.client.responses.create(**plain)
        self.assertEqual(whole.object, "response")
        self.assertTrue(whole.id.startswith("resp_"))
        self.assertIn(whole.status, ("completed", "incomplete"))
        self.assertTrue(whole.output_text)
        self.assertEqual(whole.usage.total_tokens, whole.usage.input_tokens + whole.usage.output_tokens)
        text, final, numbers = "", None, []
        for event in self.client.responses.create(stream=True, **plain):
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
        self.assertEqual(numbers, list(range(len(numbers))))
        self.assertEqual(text, whole.output_text)
        self.assertEqual(final.output_text, whole.output_text)

        parsed = self.client.responses.parse(model=self.model_name, input=PROMPTS[Person], text_format=Person,
                                             temperature=0.7, max_output_tokens=MAX_TOKENS)
        self.assertIsInstance(parsed.output_parsed, Person, parsed.output_text)

        tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
                  "parameters": t["function"]["parameters"]} for t in self.TOOLS]
        called = self.client.responses.create(model=self.model_name, input="Add 2 and 3.", tools=tools,
                                              tool_choice={"type": "function", "name": "add"}, temperature=0,
                                              max_output_tokens=MAX_TOKENS)
        calls = [item for item in called.output if item.type == "function_call"]
        self.assertEqual([c.name for c in calls][:1], ["add"])
        jsonschema.validate(json.loads(calls[0].arguments), self.schema_of("add"))
        answer = self.client.responses.create(
            model=self.model_name, tools=tools, temperature=0, max_output_tokens=24,
            input=[{"role": "user", "content": "Add 2 and 3."},
                   {"type": "function_call", "call_id": calls[0].call_id, "name": "add",
                    "arguments": calls[0].arguments},
                   {"type": "function_call_output", "call_id": calls[0].call_id, "output": "5"}])
        self.assertEqual(answer.object, "response")

        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.responses.create(model=self.model_name, input="x", previous_response_id="resp_123")
        self.assertEqual(caught.exception.body["param"], "previous_response_id")

    def test_client_default_fields_are_accepted(self):
        completion = self.client.chat.completions.create(
            model=self.model_name, messages=self.messages("hi"), max_tokens=4, store=False,
            metadata={"run": "e2e"}, service_tier="auto", user="tester")
        self.assertTrue(completion.choices[0].message.content is not None)


if __name__ == "__main__":
    unittest.main()

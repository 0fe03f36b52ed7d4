"""`nibble serve` through the official `openai` Python SDK, as a user's client talks to it.

One base class of checks, run against stories260K (converted from llama2.c, served
with a ChatML template the test writes), against the bundled SmolLM2 gguf and against
the real Gemma 3 270M gguf (served with Gemma's turn template the test writes).
"""
import unittest

import openai

import os

from nibble_server import (GEMMA3, TINY_DEEPSEEK, DeepseekV3Server, Gemma3Server, ServerTestCase, SmolLM2Server,
                           Stories260KServer)

API_KEY = "e2e-secret-key"
PROMPT = "Once upon a time"
MAX_TOKENS = 12


class OpenAIClientChecks:
    """Checks shared by every model; subclasses mix in a *Server class and ServerTestCase."""
    api_key = API_KEY
    token_ids = None  # a token-id prompt inside the model's vocabulary
    chat_prompt = "Tell me a long story about a little cat."

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.client = cls.make_client(API_KEY)

    @classmethod
    def make_client(cls, api_key):
        return openai.OpenAI(base_url=f"{cls.server.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def complete(self, **kwargs):
        kwargs.setdefault("prompt", PROMPT)
        kwargs.setdefault("max_tokens", MAX_TOKENS)
        kwargs.setdefault("temperature", 0)
        return self.client.completions.create(model=self.model_name, **kwargs)

    def chat(self, content=None, **kwargs):
        kwargs.setdefault("max_tokens", MAX_TOKENS)
        kwargs.setdefault("temperature", 0)
        messages = [{"role": "user", "content": content or self.chat_prompt}]
        return self.client.chat.completions.create(model=self.model_name, messages=messages, **kwargs)

    # --- models ---

    def test_models_list_names_the_served_model(self):
        models = list(self.client.models.list())
        self.assertEqual([m.id for m in models], [self.model_name])
        self.assertEqual(models[0].object, "model")
        self.assertEqual(models[0].owned_by, "nibble")
        self.assertIsInstance(models[0].created, int)
        self.assertGreater(models[0].model_extra["max_model_len"], 0)

    # --- completions ---

    def test_greedy_completion_is_deterministic_and_counts_its_tokens(self):
        first = self.complete()
        second = self.complete()
        self.assertEqual(first.object, "text_completion")
        self.assertEqual(first.model, self.model_name)
        self.assertEqual(len(first.choices), 1)
        choice = first.choices[0]
        self.assertEqual(choice.index, 0)
        self.assertTrue(choice.text)
        self.assertEqual(choice.text, second.choices[0].text)
        self.assertEqual(choice.finish_reason, "length")
        self.assertEqual(first.usage.completion_tokens, MAX_TOKENS)
        self.assertGreater(first.usage.prompt_tokens, 0)
        self.assertEqual(first.usage.total_tokens, first.usage.prompt_tokens + first.usage.completion_tokens)

    def test_token_id_prompt_counts_exactly_its_tokens(self):
        out = self.complete(prompt=self.token_ids, max_tokens=4)
        self.assertEqual(out.usage.prompt_tokens, len(self.token_ids))
        self.assertEqual(out.usage.completion_tokens, 4)

    def test_completion_logprobs_have_one_entry_per_generated_token(self):
        out = self.complete(logprobs=2)
        logprobs = out.choices[0].logprobs
        self.assertEqual(len(logprobs.tokens), out.usage.completion_tokens)
        self.assertEqual(len(logprobs.token_logprobs), out.usage.completion_tokens)
        self.assertEqual(len(logprobs.top_logprobs), out.usage.completion_tokens)
        self.assertEqual("".join(logprobs.tokens), out.choices[0].text)
        for token_logprob, top in zip(logprobs.token_logprobs, logprobs.top_logprobs):
            self.assertLessEqual(token_logprob, 0.0)
            self.assertTrue(1 <= len(top) <= 2, top)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(max(top.values()), token_logprob, places=3)

    def test_streamed_completion_matches_the_whole_one(self):
        whole = self.complete()
        chunks = list(self.complete(stream=True, logprobs=1, stream_options={"include_usage": True}))
        text_chunks = [c for c in chunks if c.choices]
        self.assertGreater(len(text_chunks), 1)
        for chunk in chunks:
            self.assertEqual(chunk.object, "text_completion")
        self.assertEqual("".join(c.choices[0].text for c in text_chunks), whole.choices[0].text)
        self.assertEqual([c.choices[0].finish_reason for c in text_chunks if c.choices[0].finish_reason],
                         ["length"])
        streamed_tokens = sum(len(c.choices[0].logprobs.tokens) for c in text_chunks if c.choices[0].logprobs)
        usage = chunks[-1]
        self.assertEqual(usage.choices, [])
        self.assertEqual(usage.usage.completion_tokens, streamed_tokens)
        self.assertEqual(usage.usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(usage.usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_n_choices_are_indexed_and_counted(self):
        single = self.complete(max_tokens=8)
        out = self.complete(n=3, temperature=1.0, seed=11, logprobs=1, max_tokens=8)
        self.assertEqual(sorted(c.index for c in out.choices), [0, 1, 2])
        for choice in out.choices:
            self.assertIn(choice.finish_reason, ("length", "stop"))
        self.assertEqual(out.usage.completion_tokens, sum(len(c.logprobs.tokens) for c in out.choices))
        # The prompt is counted once, not once per choice.
        self.assertEqual(out.usage.prompt_tokens, single.usage.prompt_tokens)
        self.assertGreater(len({c.text for c in out.choices}), 1, "three samples at temperature 1 were identical")

    def test_streamed_n_choices_each_finish(self):
        chunks = list(self.complete(n=2, temperature=1.0, seed=3, stream=True, max_tokens=8,
                                    stream_options={"include_usage": True}))
        finished = {}
        for chunk in chunks:
            for choice in chunk.choices:
                self.assertIn(choice.index, (0, 1))
                if choice.finish_reason:
                    self.assertNotIn(choice.index, finished)
                    finished[choice.index] = choice.finish_reason
        self.assertEqual(sorted(finished), [0, 1])
        self.assertEqual(chunks[-1].choices, [])
        self.assertLessEqual(chunks[-1].usage.completion_tokens, 16)
        self.assertGreater(chunks[-1].usage.completion_tokens, 0)

    def test_echo_prepends_the_prompt(self):
        plain = self.complete()
        echoed = self.complete(echo=True)
        self.assertTrue(echoed.choices[0].text.startswith(PROMPT), echoed.choices[0].text)
        self.assertEqual(echoed.choices[0].text, PROMPT + plain.choices[0].text)
        self.assertEqual(echoed.usage.completion_tokens, plain.usage.completion_tokens)

    def test_echo_with_logprobs_scores_the_prompt_too(self):
        plain = self.complete(logprobs=2)
        echoed = self.complete(echo=True, logprobs=2)
        lp, usage = echoed.choices[0].logprobs, echoed.usage
        self.assertEqual(len(lp.tokens), usage.prompt_tokens + usage.completion_tokens)
        self.assertIsNone(lp.token_logprobs[0], "nothing predicts the first prompt token")
        self.assertIsNone(lp.top_logprobs[0])
        prompt_part = lp.token_logprobs[1:usage.prompt_tokens]
        self.assertTrue(all(v is not None and v <= 0 for v in prompt_part), prompt_part)
        # The completion's part is what the request without echo reported.
        self.assertEqual(lp.tokens[usage.prompt_tokens:], plain.choices[0].logprobs.tokens)
        for got, want in zip(lp.token_logprobs[usage.prompt_tokens:], plain.choices[0].logprobs.token_logprobs):
            self.assertAlmostEqual(got, want, places=4)
        self.assertEqual(lp.text_offset[usage.prompt_tokens], len(PROMPT), "offsets count the echoed prompt")
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))
        # Only the prompt: max_tokens 0.
        only = self.complete(echo=True, logprobs=1, max_tokens=0)
        self.assertEqual(only.choices[0].text, PROMPT)
        self.assertEqual(len(only.choices[0].logprobs.tokens), only.usage.prompt_tokens)
        self.assertEqual(only.usage.completion_tokens, 0)

    def test_best_of_returns_n_of_its_candidates_and_bills_them_all(self):
        out = self.complete(n=2, best_of=4, temperature=1.0, seed=5, max_tokens=8)
        self.assertEqual([c.index for c in out.choices], [0, 1])
        candidates = self.complete(n=4, temperature=1.0, seed=5, max_tokens=8)
        self.assertEqual(out.usage.completion_tokens, candidates.usage.completion_tokens)
        self.assertTrue({c.text for c in out.choices} <= {c.text for c in candidates.choices})

    def test_stop_string_cuts_the_text_before_it(self):
        text = self.complete(max_tokens=16).choices[0].text
        stop = text[len(text) // 2:len(text) // 2 + 2]
        self.assertTrue(stop)
        out = self.complete(max_tokens=16, stop=[stop, "no such stop string"])
        self.assertEqual(out.choices[0].text, text[:text.index(stop)])
        self.assertEqual(out.choices[0].finish_reason, "stop")
        self.assertLessEqual(out.usage.completion_tokens, 16)

    def test_seed_makes_sampling_reproducible(self):
        def sample(seed):
            return self.complete(temperature=1.0, seed=seed).choices[0].text

        self.assertEqual(sample(1234), sample(1234))
        self.assertGreater(len({sample(seed) for seed in (1, 2, 3, 4)}), 1, "the seed changes nothing")

    # --- chat ---

    def test_chat_completion_answers_as_the_assistant(self):
        first = self.chat()
        second = self.chat()
        self.assertEqual(first.object, "chat.completion")
        self.assertEqual(first.model, self.model_name)
        message = first.choices[0].message
        self.assertEqual(message.role, "assistant")
        self.assertTrue(message.content)
        self.assertEqual(message.content, second.choices[0].message.content)
        self.assertEqual(first.choices[0].finish_reason, "length")
        self.assertEqual(first.usage.completion_tokens, MAX_TOKENS)
        longer = self.chat(self.chat_prompt + " Make it about a dog, too, and a big red ball.")
        self.assertGreater(longer.usage.prompt_tokens, first.usage.prompt_tokens)

    def test_chat_logprobs_have_one_entry_per_generated_token(self):
        out = self.chat(logprobs=True, top_logprobs=2)
        content = out.choices[0].logprobs.content
        self.assertEqual(len(content), out.usage.completion_tokens)
        self.assertEqual("".join(entry.token for entry in content), out.choices[0].message.content)
        for entry in content:
            self.assertLessEqual(entry.logprob, 0.0)
            self.assertEqual(len(entry.top_logprobs), 2)
            self.assertAlmostEqual(entry.top_logprobs[0].logprob, entry.logprob, places=3)
            self.assertGreaterEqual(entry.top_logprobs[0].logprob, entry.top_logprobs[1].logprob)

    def test_streamed_chat_matches_the_whole_one(self):
        whole = self.chat()
        chunks = list(self.chat(stream=True, stream_options={"include_usage": True}))
        for chunk in chunks:
            self.assertEqual(chunk.object, "chat.completion.chunk")
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        self.assertEqual(deltas[0].role, "assistant")
        self.assertEqual("".join(d.content or "" for d in deltas), whole.choices[0].message.content)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(reasons, ["length"])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_chat_stop_and_seed(self):
        text = self.chat(max_tokens=16).choices[0].message.content
        stop = text[len(text) // 2:len(text) // 2 + 2]
        out = self.chat(max_tokens=16, stop=stop)
        self.assertEqual(out.choices[0].message.content, text[:text.index(stop)])
        self.assertEqual(out.choices[0].finish_reason, "stop")
        sampled = [self.chat(temperature=1.0, seed=99).choices[0].message.content for _ in range(2)]
        self.assertEqual(sampled[0], sampled[1])

    def test_chat_n_choices(self):
        out = self.chat(n=2, temperature=1.0, seed=5, max_tokens=8, logprobs=True)
        self.assertEqual(sorted(c.index for c in out.choices), [0, 1])
        self.assertEqual(out.usage.completion_tokens, sum(len(c.logprobs.content) for c in out.choices))

    # --- errors, as the SDK raises them ---

    def test_a_wrong_api_key_raises_authentication_error(self):
        with self.assertRaises(openai.AuthenticationError) as raised:
            self.make_client("not-the-key").completions.create(model=self.model_name, prompt=PROMPT, max_tokens=1)
        self.assertEqual(raised.exception.status_code, 401)
        self.assertIsInstance(raised.exception.body, dict)
        self.assertIn("message", raised.exception.body)

    def test_an_unknown_model_raises_not_found(self):
        with self.assertRaises(openai.NotFoundError) as raised:
            self.client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=1)
        self.assertEqual(raised.exception.code, "model_not_found")

    def test_bad_parameters_raise_bad_request_naming_the_field(self):
        cases = [
            ("temperature", dict(temperature=-1)),
            ("max_tokens", dict(max_tokens=-5)),
            ("n", dict(n=0)),
            ("suffix", dict(suffix=" the end")),
            ("frobnicate", dict(extra_body={"frobnicate": True})),
        ]
        for param, kwargs in cases:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as raised:
                    self.complete(**kwargs)
                self.assertEqual(raised.exception.type, "invalid_request_error")
                self.assertEqual(raised.exception.param, param)

    def test_a_prompt_longer_than_the_context_is_rejected(self):
        max_model_len = list(self.client.models.list())[0].model_extra["max_model_len"]
        prompt = (self.token_ids * (max_model_len // len(self.token_ids) + 2))[:max_model_len + 1]
        with self.assertRaises(openai.BadRequestError) as raised:
            self.complete(prompt=prompt, max_tokens=1)
        self.assertEqual(raised.exception.code, "context_length_exceeded")

    def test_the_server_still_serves_after_errors(self):
        for _ in range(2):
            with self.assertRaises(openai.BadRequestError):
                self.complete(temperature="hot")
        out = self.complete(max_tokens=2)
        self.assertEqual(out.usage.completion_tokens, 2)


class Stories260K(OpenAIClientChecks, Stories260KServer, ServerTestCase):
    token_ids = [1, 400, 261, 300, 350, 270, 420]


class SmolLM2(OpenAIClientChecks, SmolLM2Server, ServerTestCase):
    token_ids = [504, 3458, 282, 4649, 314, 5125, 30]


# Gemma 3 (GeGLU, local/global layers, a 262144-token SentencePiece vocabulary) through
# the same checks; the file comes from scripts/get-gemma3-270m (CI runs it first).
@unittest.skipUnless(os.path.exists(GEMMA3), f"{GEMMA3} is missing: run scripts/get-gemma3-270m")
class Gemma3(OpenAIClientChecks, Gemma3Server, ServerTestCase):
    token_ids = [2, 818, 5279, 529, 7001, 563]  # "<bos>The capital of France is"


# DeepSeek-V3's architecture (multi-head latent attention with YaRN, sigmoid group-limited
# routing, a shared expert, a dense first layer) through the same checks: the tiny random
# model of the tiny_deepseek_models fixture (ctest e2e_openai_sdk_deepseek_v3 names its
# folder in NIBBLE_TINY_DEEPSEEK_DIR), with the Llama 2 vocabulary and DeepSeek-V3's
# <｜User｜>/<｜Assistant｜> chat format. Its text is noise, which no check reads.
# DeepseekV3Fp8: the same model in DeepSeek-V3's FP8 checkpoint format (FP8 blocks).
@unittest.skipUnless(TINY_DEEPSEEK, "NIBBLE_TINY_DEEPSEEK_DIR is not set (ctest e2e_openai_sdk_deepseek_v3 sets it)")
class DeepseekV3(OpenAIClientChecks, DeepseekV3Server, ServerTestCase):
    token_ids = [1, 9038, 2501, 263, 931, 29892, 727]  # "<s>Once upon a time, there"


@unittest.skipUnless(TINY_DEEPSEEK, "NIBBLE_TINY_DEEPSEEK_DIR is not set (ctest e2e_openai_sdk_deepseek_v3 sets it)")
class DeepseekV3Fp8(DeepseekV3):
    folder = "deepseek_v3_chat_fp8"


if __name__ == "__main__":
    unittest.main()

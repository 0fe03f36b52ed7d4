"""Logs for machines: `--log-format json` writes one JSON object per line (ts, level,
msg and the event's fields), and every request's line carries its request id: the
client's X-Request-Id when usable (echoed back), a generated UUID otherwise.
"""
import json
import re
import time
import unittest

from nibble_server import ServerTestCase, Stories260KServer, sse_events

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class JsonLogs(Stories260KServer, ServerTestCase):
    server_args = ("--log-format", "json")

    def log_lines(self):
        """Every stderr line, each of which must be one JSON object."""
        lines = []
        for line in self.server.stderr().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}")
            self.assertIsInstance(entry, dict, line)
            self.assertTrue({"ts", "level", "msg"} <= entry.keys(), line)
            self.assertRegex(entry["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            lines.append(entry)
        return lines

    def request_line(self, request_id, timeout=10):
        """The http_request line of `request_id` (written once the answer is complete)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.log_lines() if e["msg"] == "http_request" and e.get("request_id") == request_id]
            if found:
                self.assertEqual(len(found), 1, found)
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no http_request line for {request_id}")

    def completion(self, **headers):
        return self.server.post("/v1/completions", {"model": self.model_name, "prompt": "Once", "max_tokens": 4},
                                headers=headers)

    def test_startup_lines_are_json_with_typed_fields(self):
        ready = [e for e in self.log_lines() if e["msg"] == "model_ready"]
        self.assertEqual(len(ready), 1)
        self.assertEqual(ready[0]["level"], "info")
        self.assertEqual(ready[0]["model"], self.model_name)
        self.assertIsInstance(ready[0]["context"], int)
        self.assertIsInstance(ready[0]["load_seconds"], float)
        # Loading reports its progress; the last line says it is complete.
        progress = [e for e in self.log_lines() if e["msg"] == "load_progress"]
        self.assertTrue(progress)
        self.assertEqual(progress[-1]["fraction"], 1.0)
        self.assertEqual(progress[-1]["layers"], "5/5")
        self.assertGreater(progress[-1]["weight_bytes"], 0)
        self.assertEqual(self.server.metrics()[("nibble_model_load_progress", frozenset({("model", self.model_name)}))], 1)

    def test_a_client_request_id_is_echoed_and_logged(self):
        response = self.completion(**{"X-Request-Id": "trace-abc.123"})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.headers["X-Request-Id"], "trace-abc.123")
        line = self.request_line("trace-abc.123")
        self.assertEqual((line["path"], line["status"], line["method"]), ("/v1/completions", 200, "POST"))
        self.assertEqual(line["completion_tokens"], 4)
        self.assertEqual(line["response_id"], response.json()["id"])

    def test_digits_stay_a_string(self):
        response = self.server.get("/v1/models", headers={"X-Request-Id": "0042"})
        self.assertEqual(response.headers["X-Request-Id"], "0042")
        self.assertEqual(self.request_line("0042")["status"], 200)

    def test_without_or_with_an_unusable_id_a_uuid_is_generated(self):
        for headers in ({}, {"X-Request-Id": 'bad id"\\'}):
            response = self.completion(**headers)
            self.assertEqual(response.status, 200, response)
            generated = response.headers["X-Request-Id"]
            self.assertRegex(generated, UUID)
            self.request_line(generated)
        self.assertNotIn("bad id", self.server.stderr())

    def test_a_long_id_is_cut_to_128_characters(self):
        response = self.server.get("/v1/models", headers={"X-Request-Id": "x" * 500})
        self.assertEqual(response.headers["X-Request-Id"], "x" * 128)
        self.request_line("x" * 128)

    def test_errors_and_streams_carry_the_id_too(self):
        bad = self.server.post("/v1/completions", {"model": self.model_name, "prompt": "Once", "max_tokens": -1},
                               headers={"X-Request-Id": "bad-request-1"})
        self.assertEqual(bad.status, 400)
        self.assertEqual(bad.headers["X-Request-Id"], "bad-request-1")
        self.assertEqual(self.request_line("bad-request-1")["status"], 400)

        connection, response = self.server.open_stream(
            "/v1/completions", {"model": self.model_name, "prompt": "Once", "max_tokens": 4, "stream": True})
        try:
            self.assertEqual(response.status, 200)
            generated = response.getheader("X-Request-Id")
            self.assertRegex(generated, UUID)
            self.assertEqual(list(sse_events(response))[-1], "[DONE]")
        finally:
            connection.close()
        self.assertEqual(self.request_line(generated)["status"], 200)


if __name__ == "__main__":
    unittest.main()

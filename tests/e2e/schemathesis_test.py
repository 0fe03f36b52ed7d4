"""schemathesis against `nibble serve`'s own /openapi.json: every operation, with
generated valid and invalid requests, must answer as the document says (status
codes, content types, response schemas, headers), never with a 5xx, reject what
the schema forbids, accept what it allows, and (with a key) refuse requests
without it. Runs once without an API key and once with one; any failed check
fails the test.

Fields whose validity is semantic (a JSON Schema, regex or grammar to enforce, a
forced tool call) are left out of generation by schemathesis_hooks.py, which says
why and where they are tested instead.

Bounded: --max-examples per operation, a fixed --seed (the same requests every
run, so a failure reproduces) and the server's --max-tokens kept small so every
generated completion is short on stories260K.
"""
import os
import subprocess
import sys
import tempfile
import unittest

from nibble_server import ServerTestCase, Stories260KServer

MAX_EXAMPLES = int(os.environ.get("NIBBLE_SCHEMATHESIS_EXAMPLES", "30"))
SEED = 2026
RUN_TIMEOUT_S = 500


# Every operation with every check, except /v1/responses; that one with every check
# but positive_data_acceptance: its coverage phase (which hooks do not filter) builds
# a named tool_choice beside tools that do not hold the name, which no JSON Schema can
# rule out and the server rightly refuses. The SDK tests it in e2e_structured_output.
RUNS = (["--exclude-path", "/v1/responses"],
        ["--include-path", "/v1/responses", "--exclude-checks", "positive_data_acceptance"])


class SchemathesisChecks:
    def run_schemathesis(self, headers=()):
        for scope in RUNS:
            with self.subTest(scope=" ".join(scope)):
                self.run_scoped(scope, headers)

    def run_scoped(self, scope, headers):
        report = tempfile.mkdtemp(prefix="nibble-schemathesis-")
        command = [sys.executable, "-m", "schemathesis.cli", "run", f"{self.server.base_url}/openapi.json",
                   "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "2",
                   "--request-timeout", "60", "--no-shrink", "--report", "junit", "--report-dir", report, *scope]
        for header in headers:
            command += ["-H", header]
        # In the temp dir: schemathesis keeps a .schemathesis/ cache in its working directory.
        result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=report,
                                env=dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks", NO_COLOR="1",
                                         PYTHONPATH=os.path.dirname(os.path.abspath(__file__))))
        output = result.stdout + result.stderr
        print(output[-6000:], flush=True)
        self.assertEqual(result.returncode, 0, f"schemathesis found failures:\n{output[-20000:]}")
        # Guard against a run that tested nothing (no operations found, all skipped).
        self.assertRegex(output, r"\b[1-9]\d* passed\b")
        self.assertNotRegex(output, r"\b[1-9]\d* (failed|errored)\b")


class WithoutKey(Stories260KServer, ServerTestCase, SchemathesisChecks):
    server_args = ("--max-tokens", "8", "--max-model-len", "128")

    def test_every_operation_conforms(self):
        self.run_schemathesis()


class WithKey(Stories260KServer, ServerTestCase, SchemathesisChecks):
    api_key = "schemathesis-key"
    server_args = ("--max-tokens", "8", "--max-model-len", "128")

    def test_every_operation_conforms_with_the_key(self):
        self.run_schemathesis([f"Authorization: Bearer {self.api_key}"])


if __name__ == "__main__":
    unittest.main()

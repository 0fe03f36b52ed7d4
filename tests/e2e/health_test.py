"""Probes that mean something: /health/ready and /health/live follow the scheduler's
step loop, not just the socket.

`--test-stall-after-steps N` (a hidden, test-only flag) makes the model's N+1-th
step hang, as a stuck kernel would. Readiness must then turn red after
`--readiness-stall-seconds` and liveness after `--liveness-stall-seconds`, in that
order, on the main port and on the probe port alike, while an idle server stays
green however long it idles.
"""
import http.client
import json
import threading
import time
import unittest

from nibble_server import ServerTestCase, Stories260KServer, free_port

READINESS_S = 1.0
LIVENESS_S = 3.0
SLACK_S = 2.0  # a step, a poll interval and a loaded CI machine


class StalledStepLoop(Stories260KServer, ServerTestCase):
    probe_port = free_port()
    # Two steps for the first completion (prefill + one decode), two more for the
    # second, which then hangs.
    server_args = ("--test-stall-after-steps", "4", "--readiness-stall-seconds", str(READINESS_S),
                   "--liveness-stall-seconds", str(LIVENESS_S), "--probe-port", str(probe_port))

    def probe(self, path, on_probe_port=False):
        port = self.probe_port if on_probe_port else self.server.port
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def test_readiness_then_liveness_turn_red_when_the_step_loop_hangs(self):
        for on_probe_port in (False, True):
            for path in ("/health", "/health/ready", "/health/live"):
                self.assertEqual(self.probe(path, on_probe_port), (200, {"status": "ok"}), (path, on_probe_port))

        body = {"model": self.model_name, "prompt": "Once upon", "max_tokens": 2, "temperature": 0}
        response = self.server.post("/v1/completions", body)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["usage"]["completion_tokens"], 2)
        # Idle for longer than the readiness threshold: still ready, still alive.
        time.sleep(READINESS_S + 0.5)
        self.assertEqual(self.probe("/health/ready"), (200, {"status": "ok"}))
        self.assertEqual(self.probe("/health/live"), (200, {"status": "ok"}))

        outcome = {}

        def hung_request():
            try:
                outcome["response"] = self.server.post("/v1/completions", dict(body, max_tokens=16), timeout=60)
            except OSError as error:  # the server is killed under it
                outcome["error"] = error

        start = time.monotonic()
        worker = threading.Thread(target=hung_request, daemon=True)
        worker.start()
        not_ready_at = not_live_at = None
        ready_red_live_green = False
        while time.monotonic() - start < LIVENESS_S + SLACK_S + 5 and not_live_at is None:
            ready, ready_body = self.probe("/health/ready", on_probe_port=True)
            live, live_body = self.probe("/health/live")
            now = time.monotonic() - start
            if ready == 503 and not_ready_at is None:
                not_ready_at = now
                self.assertEqual(ready_body["status"], "stalled")
                self.assertGreater(ready_body["stalled_seconds"], READINESS_S)
                health, health_body = self.probe("/health")
                self.assertEqual((health, health_body["status"]), (503, "stalled"), "/health means ready")
            if ready == 503 and live == 200:
                ready_red_live_green = True
            if live == 503:
                not_live_at = now
                self.assertEqual(live_body["status"], "stalled")
                self.assertGreater(live_body["stalled_seconds"], LIVENESS_S)
            time.sleep(0.1)

        self.assertIsNotNone(not_ready_at, "readiness never turned red")
        self.assertIsNotNone(not_live_at, "liveness never turned red")
        self.assertTrue(READINESS_S <= not_ready_at <= READINESS_S + SLACK_S, not_ready_at)
        self.assertTrue(LIVENESS_S <= not_live_at <= LIVENESS_S + SLACK_S, not_live_at)
        self.assertTrue(ready_red_live_green, "readiness turns red before liveness does")
        self.assertEqual(self.probe("/health/live", on_probe_port=True)[0], 503)
        self.assertNotIn("response", outcome, "the stalled request cannot have finished")
        self.assertIn("test_stall_injected", self.server.stderr())
        self.assertIn("step_loop_stalled", self.server.stderr())

        # A hung process does not drain: the orchestrator kills it.
        self.server.proc.kill()
        self.server.proc.wait()
        worker.join(timeout=30)
        self.assertIn("error", outcome)


if __name__ == "__main__":
    unittest.main()

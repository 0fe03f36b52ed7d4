"""The container image run as an orchestrator runs it, without a Docker daemon.

Started by `scripts/image --test` (CI: `scripts/image --ci`) after it built the image
with buildah. NIBBLE_IMAGE names the image in buildah's local storage; NIBBLE_MODEL_DIR
is the folder mounted read-only at /models (scripts/get-model's models/), or empty for
the demo image, which carries its model. The image's own configuration is what runs:
its entrypoint, command, environment, user and health check are read from the image,
and runc runs it with a read-only root filesystem, no new privileges, a few
capabilities and a network namespace of its own (loopback only), as `docker run
--read-only` or a Kubernetes pod with readOnlyRootFilesystem would. The test joins that
network namespace to talk to the server at 127.0.0.1:8000, the image's default port.
(runc, not crun: Debian 12's crun refuses this machine's hybrid cgroup v1/v2 layout.)
"""
import ctypes
import http.client
import json
import os
import resource
import subprocess
import tempfile
import threading
import time
import unittest

IMAGE = os.environ["NIBBLE_IMAGE"]
MODEL_DIR = os.environ.get("NIBBLE_MODEL_DIR", "")
MODEL = "SmolLM2-135M-Instruct.Q4_1"
PORT = 8000
READY_TIMEOUT_S = 120
DRAIN_TIMEOUT_S = 30  # nibble serve's default --drain-timeout, which the image keeps
CLONE_NEWNET = 0x40000000


def run(*args, check=True, timeout=60):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


def image_config():
    out = run("buildah", "inspect", "--type", "image", IMAGE).stdout
    return json.loads(out)["Docker"]["config"]


def bundle_config(rootfs, config, model_dir):
    """runc's default rootful spec (read-only root, no new privileges, a few
    capabilities, own namespaces) running what the image says it runs."""
    with tempfile.TemporaryDirectory() as scratch:
        run("runc", "spec", "--bundle", scratch)
        with open(os.path.join(scratch, "config.json")) as f:
            spec = json.load(f)
    user = config.get("User", "")
    uid, _, gid = user.partition(":")
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["process"].update({
        "terminal": False,
        "args": (config.get("Entrypoint") or []) + (config.get("Cmd") or []),
        "env": config.get("Env") or [],
        "cwd": config.get("WorkingDir") or "/",
        "user": {"uid": int(uid or 0), "gid": int(gid or uid or 0)},
        # As many open files as this process may have (a container runtime's default
        # is higher than runc's 1024; more cannot be granted from here).
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": open_files, "soft": open_files}],
    })
    spec["hostname"] = "nibble"
    if model_dir:
        spec["mounts"].append({"destination": "/models", "type": "bind", "source": model_dir,
                               "options": ["rbind", "ro"]})
    return spec


def enter_network_namespace(pid):
    """From here on this process's sockets live in the container's network namespace
    (per thread, inherited by threads started later; runc is unaffected)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/proc/{pid}/ns/net") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the container's network namespace")


def request(method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.config = image_config()
        cls.work = tempfile.TemporaryDirectory(prefix="nibble-image-test-")
        cls.container = run("buildah", "from", "--pull=never", IMAGE).stdout.strip()
        cls.rootfs = run("buildah", "mount", cls.container).stdout.strip()
        bundle = cls.work.name
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(bundle_config(cls.rootfs, cls.config, MODEL_DIR), f)
        cls.id = f"nibble-image-test-{os.getpid()}"
        cls.log = open(os.path.join(bundle, "container.log"), "w+")
        cls.runtime = subprocess.Popen(["runc", "run", "--bundle", bundle, cls.id],
                                       stdin=subprocess.DEVNULL, stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        cls.pid = 0
        while not cls.pid and time.monotonic() < deadline:
            state = run("runc", "state", cls.id, check=False)
            if state.returncode == 0:
                cls.pid = json.loads(state.stdout).get("pid", 0)
            if cls.runtime.poll() is not None:
                break
            time.sleep(0.1)
        if not cls.pid:
            log = cls.container_log()
            cls.tearDownClass()
            raise AssertionError(f"the container did not start: {log}")
        enter_network_namespace(cls.pid)
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and cls.runtime.poll() is None:
            try:
                status, _ = request("GET", "/health", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.25)
        if status != 200:
            log = cls.container_log()
            cls.tearDownClass()
            raise AssertionError(f"/health never answered 200 (last {status}): {log}")

    @classmethod
    def tearDownClass(cls):
        if cls.runtime.poll() is None:
            run("runc", "kill", cls.id, "KILL", check=False)
            cls.runtime.wait(timeout=30)
        run("runc", "delete", "--force", cls.id, check=False)
        run("buildah", "umount", cls.container, check=False)
        run("buildah", "rm", cls.container, check=False)
        cls.log.close()
        cls.work.cleanup()

    @classmethod
    def container_log(cls):
        cls.log.flush()
        cls.log.seek(0)
        return cls.log.read()[-4000:]

    def exec_in(self, *args):
        return run("runc", "exec", self.id, *args, check=False)

    def test_1_runs_as_the_images_non_root_user_on_a_read_only_root(self):
        user = self.config.get("User", "")
        self.assertRegex(user, r"^[1-9][0-9]*(:[1-9][0-9]*)?$", "USER must be a numeric non-root id")
        with open(f"/proc/{self.pid}/status") as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {user.split(":")[0]}, "the server's real/effective/saved uid")
        with open(f"/proc/{self.pid}/cmdline") as cmdline:
            self.assertEqual(os.path.basename(cmdline.read().split("\0")[0]), "nibble", "nibble must be PID 1")
        for path in ("/probe", "/tmp/probe", "/models/probe"):
            write = self.exec_in("sh", "-c", f": > {path}")
            self.assertNotEqual(write.returncode, 0, f"{path} was writable")
            self.assertIn("Read-only file system", write.stderr)

    def test_2_runtime_stage_is_slim_and_holds_no_model(self):
        for tool in ("g++", "cc", "cmake", "ninja", "python3", "pip3", "curl"):
            self.assertNotEqual(self.exec_in("sh", "-c", f"command -v {tool}").returncode, 0,
                                f"{tool} is in the runtime image")
        if MODEL_DIR:
            self.assertEqual(os.listdir(os.path.join(self.rootfs, "models")), [],
                             "the generic image must not carry a model")

    def test_3_healthcheck_passes_when_ready(self):
        check = self.config.get("Healthcheck") or {}
        test = check.get("Test") or []
        self.assertEqual(test[:1], ["CMD"], f"HEALTHCHECK lost or not in exec form: {check}")
        result = self.exec_in(*test[1:])
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_4_completion(self):
        status, body = request("POST", "/v1/completions",
                               {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8})
        self.assertEqual(status, 200, body)
        answer = json.loads(body)
        self.assertEqual(answer["usage"]["completion_tokens"], 8)
        self.assertTrue(answer["choices"][0]["text"].strip())

    def test_5_sigterm_drains_the_request_in_flight_and_exits_0(self):
        max_tokens = 192
        first_chunk = threading.Event()
        result = {}

        def stream():
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=DRAIN_TIMEOUT_S + 30)
            try:
                conn.request("POST", "/v1/completions", body=json.dumps({
                    "model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}),
                    headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                result["status"] = response.status
                events = []
                for line in response:
                    line = line.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    events.append(line[len("data: "):])
                    first_chunk.set()
                result["events"] = events
            except Exception as error:  # reported by the assertions below
                result["error"] = repr(error)
            finally:
                first_chunk.set()
                conn.close()

        client = threading.Thread(target=stream)
        client.start()
        self.assertTrue(first_chunk.wait(60), "no first chunk")
        self.assertNotIn("error", result)
        run("runc", "kill", self.id, "TERM")
        signalled = time.monotonic()
        # New work is refused while the stream goes on.
        refused = None
        while refused is None and time.monotonic() - signalled < 10:
            try:
                status, _ = request("GET", "/health", timeout=2)
                if status == 503:
                    refused = "503"
            except OSError:
                refused = "connection refused"
            time.sleep(0.05)
        self.assertIsNotNone(refused, "the server still took new requests after SIGTERM")
        client.join(DRAIN_TIMEOUT_S + 30)
        self.assertNotIn("error", result, self.container_log())
        self.assertEqual(result.get("status"), 200)
        events = result["events"]
        self.assertEqual(events[-1], "[DONE]", self.container_log())
        usage = json.loads(events[-2])["usage"]
        self.assertEqual(usage["completion_tokens"], max_tokens, "the in-flight request was cut short")
        finishes = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c.get("finish_reason")]
        self.assertEqual(finishes, ["length"])
        exit_code = self.runtime.wait(timeout=DRAIN_TIMEOUT_S + 10)
        self.assertEqual(exit_code, 0, self.container_log())
        print(f"image_test: drained {max_tokens}-token stream; exit 0 "
              f"{time.monotonic() - signalled:.1f} s after SIGTERM; refused new work with {refused}")


if __name__ == "__main__":
    unittest.main(verbosity=2)

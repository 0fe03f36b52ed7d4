"""Starting and talking to a real `nibble serve` process, shared by the e2e tests.

Run by ctest with NIBBLE_BIN, NIBBLE_SHARED_DIR and NIBBLE_MODEL_CACHE set. Every
server gets a free port and its own temp dir, so test files can run in parallel.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest

BIN = os.environ["NIBBLE_BIN"]
SHARED = os.environ["NIBBLE_SHARED_DIR"]
SMOLLM2 = os.path.join(os.environ["NIBBLE_MODEL_CACHE"], "SmolLM2-135M-Instruct.Q4_1.gguf")
STORIES = os.path.join(SHARED, "models", "stories260K")
# The real Gemma 3 270M Q4_K_M of scripts/get-gemma3-270m (CI fetches it first).
GEMMA3 = os.path.join(os.environ["NIBBLE_MODEL_CACHE"], "gemma-3-270m-q4_k_m.gguf")

# A ChatML-style template for stories260K, which ships none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma's turn format (its model card: <start_of_turn>user / model ... <end_of_turn>),
# for the Gemma 3 GGUF, which ships no template: BOS first (the template writes it, as
# Gemma's own does), the assistant's turns as "model", a system message folded into
# the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(prefix='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.prefix = message['content'] + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{{ ns.prefix + message['content'] | trim }}{% set ns.prefix = '' %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# The tiny random DeepSeek-V3 with the Llama 2 vocabulary and DeepSeek-V3's chat format
# that tests/reference/make_tiny_deepseek_models.py writes (ctest fixture
# tiny_deepseek_models); None where that fixture's folder is not given.
TINY_DEEPSEEK = os.environ.get("NIBBLE_TINY_DEEPSEEK_DIR")

READY_TIMEOUT_S = 60
# A tensor-parallel run of the same tests (e2e_openai_sdk_tp2): the launcher
# before the binary ("mpirun -np 2") and the flags after `serve`
# ("--tensor-parallel-size 2"), both split on spaces.
LAUNCH = os.environ.get("NIBBLE_LAUNCH", "").split()
SERVE_ARGS = os.environ.get("NIBBLE_SERVE_ARGS", "").split()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def convert_stories260k(out_dir):
    """The llama2.c checkpoint as a Hugging Face folder under out_dir; returns its path."""
    model = os.path.join(out_dir, "stories260K")
    result = subprocess.run([BIN, "convert", "--from", "llama2c", os.path.join(STORIES, "stories260K.bin"),
                             "--tokenizer", os.path.join(STORIES, "tok512.bin"), "--out", model],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"nibble convert failed ({result.returncode}): {result.stderr}")
    return model


def parse_metrics(text):
    """Prometheus text format -> {(name, frozenset(labels.items())): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?', line)
        if not match:
            raise AssertionError(f"not a Prometheus sample line: {line!r}")
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), frozenset(labels.items()))] = float(match.group(3))
    return samples


def metric(samples, name, **labels):
    """The sum of a metric's samples whose labels include `labels` (None when there is none)."""
    values = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return sum(values) if values else None


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:500]!r}"


class NibbleServer:
    """One `nibble serve` process on a free port; stderr goes to a temp file."""

    def __init__(self, model, *args, api_key=None, key_in_env=False, split=True):
        """api_key: passed as --api-key, or as NIBBLE_API_KEY with key_in_env. split=False
        ignores NIBBLE_LAUNCH and NIBBLE_SERVE_ARGS: one process, the reference of a split run."""
        self.model, self.args, self.api_key = model, list(args), api_key
        self.launch, self.serve_args = (LAUNCH, SERVE_ARGS) if split else ([], [])
        self.env = dict(os.environ)
        self.env.pop("NIBBLE_API_KEY", None)
        if api_key and key_in_env:
            self.env["NIBBLE_API_KEY"] = api_key
        self.key_flag = ["--api-key", api_key] if api_key and not key_in_env else []
        self.tmp = tempfile.TemporaryDirectory(prefix="nibble-e2e-")
        self.proc = None
        self.port = None

    def start(self):
        # A free port can be taken by a parallel test between our probe and the
        # server's bind; then the server exits at once and we try another.
        for _ in range(3):
            self.port = free_port()
            self.stderr_path = os.path.join(self.tmp.name, f"stderr-{self.port}.log")
            command = [*self.launch, BIN, "--log-level", "info", "serve", "-m", self.model, "--host", "127.0.0.1",
                       "--port", str(self.port), *self.key_flag, *self.serve_args, *self.args]
            with open(self.stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=stderr, env=self.env)
            if self._wait_ready():
                return self
            if "in use" not in self.stderr().lower():
                break
        raise AssertionError(f"nibble serve did not become ready: {' '.join(self.proc.args)}\n{self.stderr()}")

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.get("/health", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        self.proc.wait()
        return False

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def close(self):
        self.stop()
        self.tmp.cleanup()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def auth_headers(self, key=None):
        key = key or self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, method, path, body=None, headers=None, auth=True, timeout=120):
        """One request on a new connection. `body` may be bytes, str or a JSON-able object."""
        all_headers = dict(self.auth_headers() if auth else {}, **(headers or {}))
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            all_headers.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, body, **kwargs):
        return self.request("POST", path, body=body, **kwargs)

    def metrics(self):
        response = self.get("/metrics")
        if response.status != 200:
            raise AssertionError(f"GET /metrics: {response!r}")
        return parse_metrics(response.body.decode())

    def open_stream(self, path, body, timeout=120):
        """POSTs a streaming request; returns (connection, response) to read events from."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        connection.request("POST", path, body=json.dumps(body),
                           headers=dict(self.auth_headers(), **{"Content-Type": "application/json"}))
        return connection, connection.getresponse()

    def wait_for_metric(self, name, predicate, timeout=30, **labels):
        """Polls /metrics until predicate(value) holds; returns the value or fails."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = metric(self.metrics(), name, **labels)
            if predicate(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} stayed at {value} for {timeout} s")


def sse_events(response):
    """Yields the `data:` payloads of an SSE response, as they arrive, until [DONE] (included)."""
    data = []
    while True:
        line = response.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif line == "" and data:
            payload = "\n".join(data)
            data = []
            yield payload
            if payload == "[DONE]":
                return


def write_chat_template(directory, template=CHATML_TEMPLATE, name="chatml.jinja"):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(template)
    return path


class Stories260KServer:
    """Mixin: setUpClass converts stories260K and serves it with the ChatML template."""
    server_args = ()
    api_key = None
    served_model_name = None  # --served-model-name, when set

    @classmethod
    def start_server(cls):
        cls.model_tmp = tempfile.TemporaryDirectory(prefix="nibble-e2e-model-")
        model = convert_stories260k(cls.model_tmp.name)
        template = write_chat_template(cls.model_tmp.name)
        args = ["--chat-template", template, *cls.server_args]
        cls.model_name = "stories260K"  # the folder's name
        if cls.served_model_name:
            args += ["--served-model-name", cls.served_model_name]
            cls.model_name = cls.served_model_name
        return NibbleServer(model, *args, api_key=cls.api_key).start()

    @classmethod
    def cleanup_model(cls):
        cls.model_tmp.cleanup()


class SmolLM2Server:
    """Mixin: serves the bundled SmolLM2-135M-Instruct gguf (it has its own chat template)."""
    server_args = ()
    api_key = None

    @classmethod
    def start_server(cls):
        cls.model_tmp = None
        cls.model_name = "SmolLM2-135M-Instruct.Q4_1"
        return NibbleServer(SMOLLM2, *cls.server_args, api_key=cls.api_key).start()

    @classmethod
    def cleanup_model(cls):
        pass


class Gemma3Server:
    """Mixin: serves the real Gemma 3 270M Q4_K_M gguf with Gemma's turn template."""
    server_args = ()
    api_key = None

    @classmethod
    def start_server(cls):
        cls.model_tmp = tempfile.TemporaryDirectory(prefix="nibble-e2e-model-")
        template = write_chat_template(cls.model_tmp.name, GEMMA_TEMPLATE, "gemma.jinja")
        cls.model_name = "gemma-3-270m-q4_k_m"
        return NibbleServer(GEMMA3, "--chat-template", template, *cls.server_args, api_key=cls.api_key).start()

    @classmethod
    def cleanup_model(cls):
        cls.model_tmp.cleanup()


class DeepseekV3Server:
    """Mixin: serves a folder of the fixture's (TINY_DEEPSEEK) tiny DeepSeek-V3 (latent
    attention, YaRN, grouped routing over 8 experts plus a shared one) with its own
    tokenizer and chat template: deepseek_v3_chat, or deepseek_v3_chat_fp8 (FP8 blocks)."""
    server_args = ()
    api_key = None
    folder = "deepseek_v3_chat"

    @classmethod
    def start_server(cls):
        cls.model_tmp = None
        cls.model_name = cls.folder  # the folder's name
        return NibbleServer(os.path.join(TINY_DEEPSEEK, cls.folder), *cls.server_args, api_key=cls.api_key).start()

    @classmethod
    def cleanup_model(cls):
        pass


class ServerTestCase(unittest.TestCase):
    """A test class with one server for all its tests (mix in a *Server class first).

    When a test fails, the end of the server's stderr is added to the failure.
    """

    @classmethod
    def setUpClass(cls):
        try:
            cls.server = cls.start_server()
        except BaseException:
            cls.cleanup_model()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.cleanup_model()

    def run(self, result=None):
        result = result if result is not None else self.defaultTestResult()
        failures = len(result.failures) + len(result.errors)
        outcome = super().run(result)
        if len(result.failures) + len(result.errors) > failures and hasattr(self, "server"):
            print(f"\n--- nibble serve stderr (last 3000 chars) for {self.id()} ---\n"
                  f"{self.server.stderr()[-3000:]}", flush=True)
        return outcome

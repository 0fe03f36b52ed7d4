"""deploy/k8s rendered and checked offline, as a cluster's API server would and more.

Every overlay in deploy/k8s/overlays is rendered with `kubectl kustomize` (kustomize
v5 inside kubectl; a `kustomize` binary works too) and every object is validated:
built-in kinds by kubernetes-validate (pinned in tests/requirements.txt) with strict
schemas for the oldest and newest Kubernetes it knows of those we support, the CRD
kinds (PodMonitor, ScaledObject) by the JSON schemas in tests/k8s/crd-schemas (the
fields we use, unknown fields rejected). A kind with no schema fails. Then what the
manifests promise is checked against nibble itself: every `nibble serve` flag in a
Deployment exists (`nibble serve --help`), the memory budget is one `nibble plan`
accepts for the model and the memory limit holds it, the grace period outlasts
preStop + --drain-timeout, the probes hit the probe port, the pods run non-root on a
read-only root, and every selector and metric name points at something real. Last,
`nibble serve` runs with the cpu overlay's own arguments: it must load, answer on
the probe port, export the autoscaling metric there (what the PodMonitor scrapes),
and exit 0 on SIGTERM within the grace period.

Run by ctest (deploy_manifests) with NIBBLE_BIN and NIBBLE_MODEL_CACHE set.
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import kubernetes_validate
import yaml
from jsonschema import Draft202012Validator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from nibble_server import NibbleServer, free_port, metric, parse_metrics  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = sorted(os.listdir(os.path.join(K8S, "overlays")))
CRD_SCHEMAS = os.path.join(os.path.dirname(__file__), "crd-schemas")
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]  # the oldest we claim, the newest kubernetes-validate knows
BIN = os.environ["NIBBLE_BIN"]
MODEL_CACHE = os.environ["NIBBLE_MODEL_CACHE"]
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9,
         "T": 10**12, "": 1}


def render(overlay):
    path = os.path.join(K8S, "overlays", overlay)
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", path]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", path]
    else:
        raise AssertionError("neither kubectl nor kustomize is installed (deploy/README.md: validating offline)")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def crd_validators():
    validators = {}
    for name in os.listdir(CRD_SCHEMAS):
        with open(os.path.join(CRD_SCHEMAS, name)) as f:
            schema = json.load(f)
        Draft202012Validator.check_schema(schema)
        key = (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])
        validators[key] = Draft202012Validator(schema)
    return validators


def quantity(text):
    """Bytes in a Kubernetes quantity (1280Mi) or a nibble size (1GiB, 24GB)."""
    match = re.fullmatch(r"([0-9.]+)([KMGT]i|[kKMGT]|)B?", str(text))
    if not match:
        raise AssertionError(f"not a memory quantity: {text}")
    return float(match.group(1)) * UNITS[match.group(2)]


def flags(args):
    """{'--flag': 'value' or None} of a `nibble serve` argument list (--flag=value form)."""
    parsed = {}
    for arg in args[1:]:
        name, _, value = arg.partition("=")
        parsed[name] = value or None
    return parsed


def objects_of(objects, kind):
    return [o for o in objects if o["kind"] == kind]


class ManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {overlay: render(overlay) for overlay in OVERLAYS}
        cls.crds = crd_validators()
        cls.serve_help = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, check=True).stdout

    def default(self, flag):
        """A flag's default as `nibble serve --help` shows it (--flag TYPE=VALUE)."""
        match = re.search(rf"{re.escape(flag)} [A-Z:]+=([0-9.]+)", self.serve_help)
        self.assertIsNotNone(match, f"no default for {flag} in nibble serve --help")
        return match.group(1)

    def test_overlays_exist(self):
        self.assertTrue({"cpu", "gpu"} <= set(OVERLAYS), OVERLAYS)
        for overlay, objects in self.rendered.items():
            kinds = {o["kind"] for o in objects}
            self.assertTrue({"Deployment", "Service", "PodDisruptionBudget", "PodMonitor"} <= kinds, overlay)
            self.assertTrue(kinds & {"HorizontalPodAutoscaler", "ScaledObject"}, f"{overlay}: no autoscaler")

    def test_every_object_validates(self):
        for overlay, objects in self.rendered.items():
            for obj in objects:
                name = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
                with self.subTest(name):
                    key = (obj["apiVersion"], obj["kind"])
                    if key in self.crds:
                        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in self.crds[key].iter_errors(obj)]
                        self.assertEqual(errors, [], name)
                        continue
                    for version in KUBERNETES_VERSIONS:
                        try:
                            kubernetes_validate.validate(obj, version, strict=True)
                        except kubernetes_validate.ValidationError as e:
                            self.fail(f"{name} against Kubernetes {version}: "
                                      f"{'.'.join(map(str, e.path))}: {e.message}")
                        except kubernetes_validate.SchemaNotFoundError:
                            self.fail(f"{name}: no schema for {key} in Kubernetes {version} nor tests/k8s/crd-schemas")

    def test_deployment_runs_nibble_as_promised(self):
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay):
                (deployment,) = objects_of(objects, "Deployment")
                pod = deployment["spec"]["template"]["spec"]
                (container,) = pod["containers"]
                args = flags(container["args"])
                self.assertEqual(container["args"][0], "serve")
                for flag in args:
                    self.assertTrue(re.search(rf"(^|[\s,]){re.escape(flag)}\b", self.serve_help),
                                    f"{overlay}: nibble serve has no {flag}")
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                self.assertEqual(int(args["--port"]), ports["http"])
                self.assertEqual(int(args["--probe-port"]), ports["probe"])
                # Probes on the probe port, at the agreed endpoints.
                self.assertEqual(container["startupProbe"]["httpGet"], {"path": "/health/ready", "port": "probe"})
                self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/health/ready", "port": "probe"})
                self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/health/live", "port": "probe"})
                startup = container["startupProbe"]
                self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"], 300,
                                        "a model load may take minutes")
                # SIGTERM comes after preStop; nibble then drains for --drain-timeout.
                pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
                self.assertEqual(pre_stop[0], "sleep")
                drain = float(args["--drain-timeout"])
                read_timeout = float(args.get("--read-timeout") or self.default("--read-timeout"))
                self.assertGreater(pod["terminationGracePeriodSeconds"], float(pre_stop[1]) + drain + read_timeout)
                # Non-root, no escalation, read-only root (the image's USER is 10001).
                self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                self.assertEqual(pod["securityContext"]["runAsUser"], 10001)
                security = container["securityContext"]
                self.assertFalse(security["allowPrivilegeEscalation"])
                self.assertTrue(security["readOnlyRootFilesystem"])
                self.assertEqual(security["capabilities"]["drop"], ["ALL"])
                for init in pod.get("initContainers", []):
                    self.assertTrue(init["securityContext"]["readOnlyRootFilesystem"], init["name"])
                # The model comes from a volume, read-only, and the path is inside it.
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                self.assertTrue(mounts["/models"]["readOnly"])
                self.assertTrue(args["--model"].startswith("/models/"))
                volumes = {v["name"]: v for v in pod["volumes"]}
                self.assertIn(mounts["/models"]["name"], volumes)
                claim = volumes[mounts["/models"]["name"]].get("persistentVolumeClaim")
                if claim:
                    self.assertIn(claim["claimName"], [o["metadata"]["name"] for o in
                                                       objects_of(objects, "PersistentVolumeClaim")])
                # Guaranteed QoS for memory: requests = limits, so a node never
                # overcommits what the KV cache was sized for.
                resources = container["resources"]
                for key in ("cpu", "memory"):
                    self.assertEqual(resources["requests"][key], resources["limits"][key], key)
                self.assertEqual(int(args["--threads"]), int(resources["limits"]["cpu"]))
                if args.get("--device") == "cuda":
                    self.assertEqual(resources["limits"]["nvidia.com/gpu"], "1")

    def test_memory_numbers_are_what_nibble_plan_accepts(self):
        """The Deployment's nibble/plan annotation is the `nibble plan` command its
        numbers came from: run on the real model it must fit, with the same model,
        budget and KV dtype as the server's flags, and the memory limit must hold
        the budget with room for the process around it."""
        kv_bits = {"float32": "32", "float16": "16", "f16": "16", "int8": "8"}
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay):
                (deployment,) = objects_of(objects, "Deployment")
                (container,) = deployment["spec"]["template"]["spec"]["containers"]
                args = flags(container["args"])
                plan = deployment["metadata"]["annotations"]["nibble/plan"].split()
                self.assertEqual(plan[0], "plan")
                options = dict(zip(plan[1::2], plan[2::2]))
                self.assertEqual(options["-m"], args["--model"])
                self.assertEqual(options["--kv-bits"], kv_bits[args.get("--kv-cache-dtype") or "float32"]
                                 if args.get("--device", "cpu") == "cpu" else options["--kv-bits"])
                if args.get("--device", "cpu") == "cpu":
                    self.assertEqual(options["--memory-budget"], args["--memory-budget"])
                    limit = quantity(container["resources"]["limits"]["memory"])
                    self.assertGreaterEqual(limit, quantity(args["--memory-budget"]) * 1.2,
                                            "leave the process ~20 % beyond its budget")
                else:
                    self.assertIn("--gpu-memory", options)
                    self.assertNotIn("--memory-budget", args)
                options["-m"] = os.path.join(MODEL_CACHE, os.path.basename(args["--model"]))
                command = [BIN, "plan", "--json"] + [x for pair in options.items() for x in pair]
                result = subprocess.run(command, capture_output=True, text=True, timeout=120)
                self.assertEqual(result.returncode, 0, f"{' '.join(command)}: {result.stdout}{result.stderr}")
                self.assertTrue(json.loads(result.stdout)["fits"])

    def test_selectors_and_metrics_point_at_real_things(self):
        with open(os.path.join(ROOT, "server", "metrics.cpp")) as f:
            exported = set(re.findall(r'"(nibble_[a-z_]+)"', f.read()))
        with open(os.path.join(K8S, "prometheus-adapter-values.yaml")) as f:
            adapter = yaml.safe_load(f)
        (rule,) = adapter["rules"]["custom"]
        self.assertIn(re.match(r"[a-z_]+", rule["seriesQuery"]).group(0), exported)
        for overlay, objects in self.rendered.items():
            with self.subTest(overlay):
                (deployment,) = objects_of(objects, "Deployment")
                pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
                selector = deployment["spec"]["selector"]["matchLabels"]
                self.assertLessEqual(selector.items(), pod_labels.items())
                (container,) = deployment["spec"]["template"]["spec"]["containers"]
                port_names = {p["name"] for p in container["ports"]}
                for kind, path in (("Service", ("spec", "selector")),
                                   ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
                                   ("PodMonitor", ("spec", "selector", "matchLabels"))):
                    (obj,) = objects_of(objects, kind)
                    chosen = obj
                    for key in path:
                        chosen = chosen[key]
                    self.assertTrue(chosen, f"{kind} selects every pod")
                    self.assertLessEqual(chosen.items(), pod_labels.items(), kind)
                (service,) = objects_of(objects, "Service")
                self.assertEqual({p["targetPort"] for p in service["spec"]["ports"]}, {"http"})
                (monitor,) = objects_of(objects, "PodMonitor")
                for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                    self.assertIn(endpoint["port"], port_names)
                    self.assertEqual(endpoint["path"], "/metrics")
                for hpa in objects_of(objects, "HorizontalPodAutoscaler"):
                    self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
                    for m in hpa["spec"]["metrics"]:
                        self.assertIn(m["pods"]["metric"]["name"], exported)
                        self.assertEqual(m["pods"]["metric"]["name"], rule["name"]["as"])
                for scaled in objects_of(objects, "ScaledObject"):
                    self.assertEqual(scaled["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
                    for trigger in scaled["spec"]["triggers"]:
                        names = set(re.findall(r"nibble_[a-z_]+", trigger["metadata"]["query"]))
                        self.assertTrue(names and names <= exported, trigger["metadata"]["query"])
                self.assertEqual(len(objects_of(objects, "HorizontalPodAutoscaler")) +
                                 len(objects_of(objects, "ScaledObject")), 1, "one autoscaler, not two")

    def test_autoscaling_queries_select_the_deployments_pods(self):
        """The prometheus-adapter rule (templated as the adapter fills it in for the
        HPA) and KEDA's query, evaluated by promtool over series labelled as the
        Prometheus Operator labels a PodMonitor's targets: one value per nibble pod
        for the adapter, their sum for KEDA, other pods and namespaces left out."""
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian's prometheus) is not installed: scripts/setup --test")
        with open(os.path.join(K8S, "prometheus-adapter-values.yaml")) as f:
            (rule,) = yaml.safe_load(f)["rules"]["custom"]
        series = rule["name"]["as"]
        adapter = (rule["metricsQuery"].replace("<<.Series>>", series)
                   .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"nibble-a|nibble-b"')
                   .replace("<<.GroupBy>>", "pod"))
        (scaled,) = objects_of(self.rendered["cpu-keda"], "ScaledObject")
        (trigger,) = scaled["spec"]["triggers"]
        inputs = [("default", "nibble-a", "0 3 6"), ("default", "nibble-b", "0 1 2"),
                  ("default", "other-a", "9 9 9"), ("elsewhere", "nibble-a", "7 7 7")]
        tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m",
            "input_series": [{"series": f'{series}{{namespace="{ns}",pod="{pod}",model="m",job="nibble"}}',
                              "values": values} for ns, pod, values in inputs],
            "promql_expr_test": [
                {"expr": adapter, "eval_time": "2m",
                 "exp_samples": [{"labels": '{pod="nibble-a"}', "value": 6}, {"labels": '{pod="nibble-b"}', "value": 2}]},
                {"expr": trigger["metadata"]["query"], "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 8}]},
            ]}]}
        with tempfile.TemporaryDirectory(prefix="nibble-k8s-promtool-") as tmp:
            with open(os.path.join(tmp, "rules.yml"), "w") as f:
                f.write("groups: []\n")
            with open(os.path.join(tmp, "tests.yml"), "w") as f:
                yaml.safe_dump(tests, f)
            result = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp,
                                    capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_cpu_overlay_arguments_serve(self):
        (deployment,) = objects_of(self.rendered["cpu"], "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = flags(container["args"])
        model = os.path.join(MODEL_CACHE, os.path.basename(args.pop("--model")))
        for local in ("--host", "--port"):
            args.pop(local)  # NibbleServer listens on 127.0.0.1 and a free port
        probe_port = free_port()
        args["--probe-port"] = str(probe_port)
        server = NibbleServer(model, *[f"{k}={v}" if v is not None else k for k, v in args.items()])
        try:
            server.start()
            conn = http.client.HTTPConnection("127.0.0.1", probe_port, timeout=10)
            conn.request("GET", "/health")
            health = conn.getresponse()
            body = health.read()
            self.assertEqual(health.status, 200, body)
            conn.request("GET", "/metrics")
            samples = parse_metrics(conn.getresponse().read().decode())
            conn.close()
            (hpa,) = objects_of(self.rendered["cpu"], "HorizontalPodAutoscaler")
            for m in hpa["spec"]["metrics"]:
                self.assertIsNotNone(metric(samples, m["pods"]["metric"]["name"]), "not on the probe port's /metrics")
            started = time.monotonic()
            self.assertEqual(server.stop(timeout=pod["terminationGracePeriodSeconds"]), 0, server.stderr())
            self.assertLess(time.monotonic() - started, pod["terminationGracePeriodSeconds"])
        finally:
            server.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)

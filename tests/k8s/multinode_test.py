"""deploy/k8s/multinode (one model split across the pods of a LeaderWorkerSet) checked offline.

Rendered with `kubectl kustomize`; the built-in kinds validated by kubernetes-validate,
the LeaderWorkerSet by tests/k8s/crd-schemas and its leader and worker pod templates
as Pods by kubernetes-validate. Then what the group promises is checked against
nibble and deploy/docker/nibble-launch: the leader's flags exist, the ranks
mpirun starts (group size x ranks per pod) are the --tensor-parallel-size, the
model takes that split (`nibble inspect --tensor-parallel-size`), the memory plan
fits, the Service and PodMonitor reach rank 0 only, every pod is non-root on a
read-only root with the writable folders Open MPI and sshd need, the Secret that
make-ssh-secret prints holds what nibble-launch reads, and nibble-launch turns
LeaderWorkerSet's environment into the hostfile of the pods' DNS names.

Run by ctest (deploy_multinode) with NIBBLE_BIN and NIBBLE_MODEL_CACHE set.
"""
import json
import os
import re
import shutil
import subprocess
import unittest

import kubernetes_validate
import yaml

from manifests_test import BIN, KUBERNETES_VERSIONS, MODEL_CACHE, ROOT, crd_validators, flags, objects_of, quantity

MULTINODE = os.path.join(ROOT, "deploy", "k8s", "multinode")
LAUNCH = os.path.join(ROOT, "deploy", "docker", "nibble-launch")


def render():
    command = ["kubectl", "kustomize", MULTINODE] if shutil.which("kubectl") else ["kustomize", "build", MULTINODE]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def launch(env, *args):
    """nibble-launch in dry-run mode with LeaderWorkerSet's environment `env`."""
    full = {"PATH": os.environ["PATH"], "NIBBLE_LAUNCH_DRY_RUN": "1", **env}
    return subprocess.run([LAUNCH, *args], capture_output=True, text=True, env=full, timeout=30)


def validate_builtin(test, obj, name):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            test.fail(f"{name} against Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")


class MultinodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objects = render()
        (cls.lws,) = objects_of(cls.objects, "LeaderWorkerSet")
        template = cls.lws["spec"]["leaderWorkerTemplate"]
        cls.size = template["size"]
        cls.leader = template["leaderTemplate"]
        cls.worker = template["workerTemplate"]
        (cls.leader_container,) = cls.leader["spec"]["containers"]
        (cls.worker_container,) = cls.worker["spec"]["containers"]
        cls.args = flags(cls.leader_container["args"])
        cls.env = {e["name"]: e.get("value") for e in cls.leader_container.get("env", [])}

    def test_every_object_validates(self):
        crds = crd_validators()
        kinds = {o["kind"] for o in self.objects}
        self.assertEqual(kinds, {"LeaderWorkerSet", "Service", "PodMonitor", "PersistentVolumeClaim"})
        for obj in self.objects:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            with self.subTest(name):
                key = (obj["apiVersion"], obj["kind"])
                if key in crds:
                    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in crds[key].iter_errors(obj)]
                    self.assertEqual(errors, [], name)
                else:
                    validate_builtin(self, obj, name)
        for role, template in (("leader", self.leader), ("worker", self.worker)):
            with self.subTest(role):
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"nibble-tp-{role}", **template.get("metadata", {})},
                       "spec": template["spec"]}
                validate_builtin(self, pod, f"{role} pod template")

    def test_group_runs_the_split_nibble_serves(self):
        self.assertEqual(self.leader_container["command"], ["nibble-launch"])
        self.assertEqual(self.worker_container["command"], ["nibble-launch"])
        self.assertNotIn("args", self.worker_container, "workers take their arguments from the leader's mpirun")
        self.assertEqual(self.leader_container["args"][0], "serve")
        serve_help = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, check=True).stdout
        for flag in self.args:
            self.assertTrue(re.search(rf"(^|[\s,]){re.escape(flag)}\b", serve_help), f"nibble serve has no {flag}")
        ranks = self.size * int(self.env.get("NIBBLE_RANKS_PER_POD") or 1)
        self.assertGreaterEqual(self.size, 2)
        self.assertEqual(int(self.args["--tensor-parallel-size"]), ranks)
        # The model takes that split (nibble refuses uneven head splits).
        model = os.path.join(MODEL_CACHE, os.path.basename(self.args["--model"]))
        result = subprocess.run([BIN, "inspect", "-m", model, "--tensor-parallel-size", str(ranks)],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        # A dead rank takes the group down and LeaderWorkerSet recreates all of it;
        # workers start with the leader, which waits for them (not the other way round).
        self.assertEqual(self.lws["spec"]["leaderWorkerTemplate"]["restartPolicy"], "RecreateGroupOnPodRestart")
        self.assertEqual(self.lws["spec"]["startupPolicy"], "LeaderCreated")
        self.assertLessEqual(int(self.args["--collective-timeout"]), 30)

    def test_memory_plan_fits_each_rank(self):
        plan = self.lws["metadata"]["annotations"]["nibble/plan"].split()
        options = dict(zip(plan[1::2], plan[2::2]))
        self.assertEqual(plan[0], "plan")
        self.assertEqual(options["-m"], self.args["--model"])
        self.assertEqual(options["--memory-budget"], self.args["--memory-budget"])
        self.assertEqual(options["--kv-bits"], {"float16": "16", "float32": "32", "int8": "8"}[
            self.args["--kv-cache-dtype"]])
        for container in (self.leader_container, self.worker_container):
            resources = container["resources"]
            for key in ("cpu", "memory"):
                self.assertEqual(resources["requests"][key], resources["limits"][key], key)
            self.assertGreaterEqual(quantity(resources["limits"]["memory"]),
                                    quantity(self.args["--memory-budget"]) * 1.2)
            self.assertEqual(int(resources["limits"]["cpu"]), int(self.args["--threads"]))
        options["-m"] = os.path.join(MODEL_CACHE, os.path.basename(self.args["--model"]))
        command = [BIN, "plan", "--json"] + [x for pair in options.items() for x in pair]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertTrue(json.loads(result.stdout)["fits"])

    def test_traffic_and_metrics_reach_rank_zero_only(self):
        name = self.lws["metadata"]["name"]
        leader_labels = {**self.leader["metadata"]["labels"], "leaderworkerset.sigs.k8s.io/name": name,
                         "leaderworkerset.sigs.k8s.io/worker-index": "0"}
        worker_labels = {**self.worker["metadata"]["labels"], "leaderworkerset.sigs.k8s.io/name": name,
                         "leaderworkerset.sigs.k8s.io/worker-index": "1"}
        (service,) = objects_of(self.objects, "Service")
        (monitor,) = objects_of(self.objects, "PodMonitor")
        self.assertNotEqual(service["metadata"]["name"], name, "LeaderWorkerSet owns the Service named after it")
        for selector in (service["spec"]["selector"], monitor["spec"]["selector"]["matchLabels"]):
            self.assertLessEqual(selector.items(), leader_labels.items())
            self.assertFalse(selector.items() <= worker_labels.items(), "a worker pod serves no HTTP")
        ports = {p["name"]: p["containerPort"] for p in self.leader_container["ports"]}
        self.assertEqual(int(self.args["--port"]), ports["http"])
        self.assertEqual(int(self.args["--probe-port"]), ports["probe"])
        self.assertEqual({p["targetPort"] for p in service["spec"]["ports"]}, {"http"})
        self.assertEqual({e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}, {"probe"})
        for probe in ("startupProbe", "readinessProbe"):
            self.assertEqual(self.leader_container[probe]["httpGet"], {"path": "/health/ready", "port": "probe"})
        worker_ports = {p["name"]: p["containerPort"] for p in self.worker_container["ports"]}
        self.assertEqual(self.worker_container["readinessProbe"]["tcpSocket"]["port"], "ssh")
        self.assertEqual(worker_ports["ssh"], int(self.env.get("NIBBLE_SSH_PORT") or 2222))

    def test_pods_are_locked_down_with_the_folders_they_need(self):
        with open(os.path.join(MULTINODE, "make-ssh-secret")) as f:
            secret_name = re.search(r'name="\$\{1:-([a-z0-9-]+)\}"', f.read()).group(1)
        for role, template, container in (("leader", self.leader, self.leader_container),
                                          ("worker", self.worker, self.worker_container)):
            with self.subTest(role):
                pod = template["spec"]
                self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                self.assertEqual(pod["securityContext"]["runAsUser"], 10001)
                security = container["securityContext"]
                self.assertFalse(security["allowPrivilegeEscalation"])
                self.assertTrue(security["readOnlyRootFilesystem"])
                self.assertEqual(security["capabilities"]["drop"], ["ALL"])
                self.assertTrue(container["image"].endswith(":mpi"), "the image built with --build-arg MPI=on")
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                volumes = {v["name"]: v for v in pod["volumes"]}
                self.assertTrue(mounts["/models"]["readOnly"])
                self.assertEqual(volumes[mounts["/etc/nibble-ssh"]["name"]]["secret"]["secretName"], secret_name)
                for writable in ("/run/nibble-ssh", "/tmp"):
                    self.assertIn("emptyDir", volumes[mounts[writable]["name"]], writable)
                claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"]
                (pvc,) = objects_of(self.objects, "PersistentVolumeClaim")
                self.assertEqual(claim, pvc["metadata"]["name"])
                self.assertIn("ReadOnlyMany", pvc["spec"]["accessModes"])
        with open(os.path.join(ROOT, "Dockerfile")) as f:
            dockerfile = f.read()
        self.assertIn("COPY deploy/docker/nibble-launch /usr/local/bin/nibble-launch", dockerfile)
        self.assertIn("ARG MPI=off", dockerfile)

    def test_ssh_secret_holds_what_nibble_launch_reads(self):
        result = subprocess.run([os.path.join(MULTINODE, "make-ssh-secret")], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        secret = yaml.safe_load(result.stdout)
        validate_builtin(self, secret, "Secret")
        with open(LAUNCH) as f:
            read = set(re.findall(r"\b(id_ed25519(?:\.pub)?|ssh_host_ed25519_key(?:\.pub)?)\b", f.read()))
        self.assertEqual(set(secret["data"]), read)
        self.assertEqual(secret["metadata"]["name"], "nibble-tp-ssh")


class LaunchTest(unittest.TestCase):
    """nibble-launch's rendezvous from LeaderWorkerSet's environment (dry run)."""

    group = {"LWS_LEADER_ADDRESS": "nibble-tp-1.nibble-tp.serving.svc.cluster.local", "LWS_GROUP_SIZE": "3"}

    def test_leader_lists_every_pod_and_starts_all_ranks(self):
        result = launch({**self.group, "LWS_WORKER_INDEX": "0", "NIBBLE_RANKS_PER_POD": "2"},
                        "serve", "-m", "/models/m.gguf", "--tensor-parallel-size", "6")
        self.assertEqual(result.returncode, 0, result.stderr)
        hosts = re.search(r"hostfile:\n((?:.+\n)+?)leader:", result.stdout).group(1).splitlines()
        self.assertEqual(hosts, ["nibble-tp-1.nibble-tp.serving.svc.cluster.local slots=2",
                                 "nibble-tp-1-1.nibble-tp.serving.svc.cluster.local slots=2",
                                 "nibble-tp-1-2.nibble-tp.serving.svc.cluster.local slots=2"])
        command = result.stdout.split("leader: ", 1)[1].split()
        self.assertEqual(command[:3], ["mpirun", "-np", "6"])
        self.assertEqual(command[-6:], ["nibble", "serve", "-m", "/models/m.gguf", "--tensor-parallel-size", "6"])

    def test_worker_runs_sshd_for_the_leader(self):
        result = launch({**self.group, "LWS_WORKER_INDEX": "2", "NIBBLE_SSH_PORT": "2022"})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Port 2022\n", result.stdout)
        self.assertIn("PasswordAuthentication no\n", result.stdout)
        self.assertRegex(result.stdout, r"worker 2: /usr/sbin/sshd -D -e -f \S+")

    def test_bad_environment_is_refused_clearly(self):
        cases = [({"LWS_GROUP_SIZE": "3", "LWS_WORKER_INDEX": "0"}, "LWS_LEADER_ADDRESS"),
                 ({**self.group, "LWS_WORKER_INDEX": "3"}, "not below LWS_GROUP_SIZE"),
                 ({**self.group, "LWS_WORKER_INDEX": "x"}, "whole number"),
                 ({**self.group, "LWS_WORKER_INDEX": "0"}, "usage")]
        for env, message in cases:
            with self.subTest(message):
                result = launch(env, *([] if message != "whole number" else ["serve"]))
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(message, result.stderr)


if __name__ == "__main__":
    unittest.main()

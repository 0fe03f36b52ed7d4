"""deploy/docker/nibble-launch for real: two "pods" in two network namespaces.

What a LeaderWorkerSet gives two pods is rebuilt on this machine: a network
namespace each (joined by a veth pair, so the worker is another host to Open MPI),
each with the LWS_* environment and DNS names of a group
(<lws>-<group>.<lws>.<ns> and <lws>-<group>-1...), the ssh keys of
make-ssh-secret in a read-only folder, and an unprivileged user with a shell, as
the MPI image has. The worker runs `nibble-launch` (sshd, non-root); the leader
runs `nibble-launch serve ... --tensor-parallel-size 2` (mpirun over ssh). Then:
rank 0 answers a completion with both ranks computing (rank 1's process lives in
the worker's namespace), /version shows the split, and SIGKILL to the worker's
rank ends the leader's mpirun within the 30 s a group has (LeaderWorkerSet would
then recreate the group).

Needs root (namespaces, a throwaway user), iproute2 and openssh-server
(scripts/setup --test installs them). Run by ctest (deploy_multinode_launch)
with NIBBLE_BIN and NIBBLE_SHARED_DIR set.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LAUNCH = os.path.join(ROOT, "deploy", "docker", "nibble-launch")
BIN = os.environ["NIBBLE_BIN"]
STORIES = os.path.join(os.environ["NIBBLE_SHARED_DIR"], "models", "stories260K")
TAG = f"nl{os.getpid() % 100000}"
LEADER_NS, WORKER_NS = f"{TAG}l", f"{TAG}w"
SUBNET = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
LEADER = "nibble-tp-0.nibble-tp.serving.svc.cluster.local"
WORKER = "nibble-tp-0-1.nibble-tp.serving.svc.cluster.local"
USER = f"nibble-{TAG}"
PORT = 8000


def run(*command, **kwargs):
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120, **kwargs)


def in_namespace(ns, user, env, command, log):
    """Starts `command` as `user` in network namespace `ns` with exactly `env`."""
    assignments = [f"{k}={v}" for k, v in env.items()]
    return subprocess.Popen(["ip", "netns", "exec", ns, "setpriv", f"--reuid={user}", f"--regid={user}",
                             "--init-groups", "env", "-i", *assignments, *command],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


class MultinodeLaunchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("needs root: network namespaces and a throwaway user")
        for tool in ("ip", "setpriv", "useradd", "ssh-keygen", "/usr/sbin/sshd", "mpirun"):
            if not shutil.which(tool):
                raise AssertionError(f"{tool} is missing (scripts/setup --test installs it)")
        cls.cleanups = []
        try:
            cls.set_up_pods()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def set_up_pods(cls):
        # Two hosts joined by a cable, each resolving the group's names.
        for ns in (LEADER_NS, WORKER_NS):
            run("ip", "netns", "add", ns)
            cls.cleanups.append(lambda ns=ns: run("ip", "netns", "del", ns))
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            cls.cleanups.append(lambda ns=ns: shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True))
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write(f"127.0.0.1 localhost\n{SUBNET}.1 {LEADER}\n{SUBNET}.2 {WORKER}\n")
        run("ip", "link", "add", f"{TAG}a", "netns", LEADER_NS, "type", "veth", "peer", "name", f"{TAG}b",
            "netns", WORKER_NS)
        for ns, dev, address in ((LEADER_NS, f"{TAG}a", 1), (WORKER_NS, f"{TAG}b", 2)):
            run("ip", "-n", ns, "addr", "add", f"{SUBNET}.{address}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # The image's user: unprivileged, with a shell for sshd's remote commands.
        run("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/bin/bash", USER)
        cls.cleanups.append(lambda: run("userdel", USER))
        # Whatever still runs as the user (sshd's sessions, orted, ranks) goes first.
        cls.cleanups.append(lambda: subprocess.run(["pkill", "-KILL", "-u", USER]) and time.sleep(0.5))
        cls.tmp = tempfile.mkdtemp(prefix="nibble-lws-")
        cls.cleanups.append(lambda: shutil.rmtree(cls.tmp, ignore_errors=True))
        os.chmod(cls.tmp, 0o755)
        # The Secret, mounted read-only (root-owned, group-readable as with fsGroup).
        secret = os.path.join(cls.tmp, "secret")
        os.mkdir(secret)
        for key in ("id_ed25519", "ssh_host_ed25519_key"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(secret, key))
        for name in os.listdir(secret):
            shutil.chown(os.path.join(secret, name), group=USER)
            os.chmod(os.path.join(secret, name), 0o440)
        model = os.path.join(cls.tmp, "stories260K")
        run(BIN, "convert", "--from", "llama2c", os.path.join(STORIES, "stories260K.bin"), "--tokenizer",
            os.path.join(STORIES, "tok512.bin"), "--out", model)
        run("chmod", "-R", "a+rX", model)
        cls.model = model
        cls.env = {}
        for role, ns, index in (("worker", WORKER_NS, 1), ("leader", LEADER_NS, 0)):
            runtime = os.path.join(cls.tmp, f"run-{role}")  # the pod's emptyDir
            os.mkdir(runtime)
            shutil.chown(runtime, user=USER, group=USER)
            home_tmp = os.path.join(cls.tmp, f"tmp-{role}")
            os.mkdir(home_tmp)
            shutil.chown(home_tmp, user=USER, group=USER)
            cls.env[role] = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": home_tmp,
                             "LWS_LEADER_ADDRESS": LEADER, "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": str(index),
                             "NIBBLE_SSH_SECRET": secret, "NIBBLE_SSH_RUNTIME": runtime, "NIBBLE_BIN": BIN,
                             "NIBBLE_RENDEZVOUS_TIMEOUT": "60", "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
                             "OMPI_MCA_orte_tmpdir_base": home_tmp}
        cls.logs = {role: open(os.path.join(cls.tmp, f"{role}.log"), "w+") for role in ("worker", "leader")}
        cls.worker = in_namespace(WORKER_NS, USER, cls.env["worker"], [LAUNCH], cls.logs["worker"])
        cls.cleanups.append(lambda: cls.stop(cls.worker))
        cls.leader = in_namespace(LEADER_NS, USER, cls.env["leader"],
                                  [LAUNCH, "serve", "-m", model, "--tensor-parallel-size", "2", "--port", str(PORT),
                                   "--threads", "1", "--collective-timeout", "30"], cls.logs["leader"])
        cls.cleanups.append(lambda: cls.stop(cls.leader))

    @classmethod
    def stop(cls, process):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    @classmethod
    def tearDownClass(cls):
        for cleanup in reversed(getattr(cls, "cleanups", [])):
            try:
                cleanup()
            except Exception as e:  # every later cleanup still runs
                print(f"cleanup: {e}")

    def log(self, role):
        self.logs[role].flush()
        with open(self.logs[role].name) as f:
            return f.read()

    def get(self, path, body=None, timeout=60):
        """HTTP to rank 0, from inside the leader's namespace (the pod network); curl
        fails (non-zero) on an HTTP error status."""
        command = ["ip", "netns", "exec", LEADER_NS, "curl", "-sSf", "--max-time", str(timeout),
                   f"http://127.0.0.1:{PORT}{path}"]
        if body is not None:
            command += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10)
        return result.returncode, result.stdout

    def wait_ready(self, seconds=120):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.assertIsNone(self.leader.poll(), f"the leader ended:\n{self.log('leader')}")
            code, _ = self.get("/health/ready", timeout=5)
            if code == 0:
                return
            time.sleep(1)
        self.fail(f"rank 0 not ready after {seconds} s:\n{self.log('leader')}\n{self.log('worker')}")

    def worker_ranks(self):
        """The ranks running in the worker's network namespace (PIDs are shared)."""
        result = subprocess.run(["pgrep", "-u", USER, "-f", f"^{BIN} serve"], capture_output=True, text=True)
        worker_net = os.stat(f"/run/netns/{WORKER_NS}").st_ino
        return [int(pid) for pid in result.stdout.split() if os.stat(f"/proc/{pid}/ns/net").st_ino == worker_net]

    def test_group_serves_then_ends_when_a_rank_dies(self):
        self.wait_ready()
        self.assertIn("sshd", self.log("worker"))
        # Rank 1 runs in the worker's namespace, started by mpirun through its sshd.
        ranks = self.worker_ranks()
        self.assertEqual(len(ranks), 1, f"{ranks}\n{self.log('leader')}")
        code, out = self.get("/version")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["parallel"]["tensor"], 2)
        code, out = self.get("/v1/completions", {"model": "stories260K", "prompt": "Once upon a time",
                                                 "max_tokens": 16, "temperature": 0})
        self.assertEqual(code, 0, out)
        answer = json.loads(out)
        self.assertEqual(answer["usage"]["completion_tokens"], 16, out)
        # The same text as one process computes alone.
        alone = subprocess.run([BIN, "generate", "-m", self.model, "--prompt", "Once upon a time", "-n", "16",
                                "--temperature", "0"], capture_output=True, text=True, timeout=120)
        self.assertEqual(alone.returncode, 0, alone.stderr)
        self.assertIn(answer["choices"][0]["text"].strip(), alone.stdout)
        # A dead worker rank ends the group (mpirun, so the leader container).
        os.kill(ranks[0], signal.SIGKILL)
        try:
            self.leader.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail(f"the leader still runs 30 s after rank 1 died:\n{self.log('leader')}")
        self.assertNotEqual(self.leader.returncode, 0)


if __name__ == "__main__":
    unittest.main()

"""Client test driver: one sandbox gateway, every client against it.

    bash scripts/clients-setup.sh                       # tools, once
    cargo build --bin hailuo-gateway --examples
    target/clients/venv/bin/python tests/clients/run.py

Starts `hailuo-gateway --sandbox` on 127.0.0.1:0 (the port is read from its
"gateway ready grpc_addr=..." log line), then runs these jobs concurrently:
grpcurl through reflection only, the Python and Node client checks, the
Python, Node and Rust examples, the command-line client, and `buf lint`; then
scrapes the gateway's admin listener after all that traffic and checks the
exposition with `promtool check metrics` (prometheus_client's parsers when
promtool is not installed; the OpenMetrics variant always). Each
job yields named checks; the last line printed is `clients: N passed, N
failed`, and the exit code is 1 if any check failed. Every process has a
timeout and is killed on exit.
"""

import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "clients"
VENV_BIN = OUT / "venv" / "bin"
GATEWAY = ROOT / "target" / "debug" / "hailuo-gateway"
RUST_EXAMPLE = ROOT / "target" / "debug" / "examples" / "watch"
NODE_BIN = ROOT / "node_modules" / ".bin"

START_TIMEOUT = 60
JOB_TIMEOUT = 120
STATES = ["WAITING", "QUEUING", "GENERATING", "SUCCEEDED"]
FULL_STATES = [f"TASK_STATE_{s}" for s in STATES]
IMAGE = "https://example.com/cat.png"
# Real PNGs sent from files (the examples upload the first by default).
FIRST_PNG = ROOT / "assets" / "first.png"
LAST_PNG = ROOT / "assets" / "last.png"

_children = set()
_children_lock = threading.Lock()


# === processes ===


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"exit {self.code}; stdout {tail(self.out)!r}; stderr {tail(self.err)!r}"


def tail(text, n=600):
    return text if len(text) <= n else "..." + text[-n:]


def run(cmd, timeout=JOB_TIMEOUT, env=None):
    """Runs a command to its end (or kills it at `timeout`)."""
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    with _children_lock:
        _children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout}s]"
    finally:
        with _children_lock:
            _children.discard(proc)
    return Result(proc.returncode, out, err)


def kill(proc, grace=0.0):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM if grace else signal.SIGKILL)
        proc.wait(timeout=grace or 5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# The key src/sandbox.rs gives the simulator and the gateway.
SANDBOX_KEY = "sandbox-key"


class Gateway:
    """`hailuo-gateway --sandbox` on loopback, its log in target/clients."""

    def __init__(self, log_name="gateway.log", env=None, extra_args=()):
        self.log_path = OUT / log_name
        self.log_path.write_text("")
        # Append mode: the gateway's stdout (its banner) and this process
        # (its stderr, copied line by line) both write here.
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(GATEWAY), "--sandbox", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
             "--admin-addr", "127.0.0.1:0", *[str(a) for a in extra_args]],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "NO_COLOR": "1",
                "GATEWAY_LOG_FORMAT": "text",
                # Everything the gateway says about itself, for the secrets
                # check at the end.
                "RUST_LOG": "info,hailuo_gateway=trace",
                **(env or {}),
            },
            start_new_session=True,
        )
        self.addr = self.http_addr = self.admin_addr = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT) or self.addr is None:
            self.stop()
            raise RuntimeError(f"gateway not ready after {START_TIMEOUT}s: {self.log_tail()}")

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
            match = re.search(r"gateway ready grpc_addr=(\S+) http_addr=(\S+) admin_addr=(\S+)", plain)
            if match and not self._ready.is_set():
                self.addr, self.http_addr, self.admin_addr = match.groups()
                self._ready.set()
        self._ready.set()

    def simulator_url(self, timeout=5.0):
        """The in-process simulator's URL, from the banner on stdout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"kie\.ai is simulated at (\S+)", self.log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            time.sleep(0.05)
        raise RuntimeError("no simulator URL in the sandbox banner")

    def log_tail(self, lines=30):
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self):
        kill(self.proc, grace=15)
        self.log.close()


# === jobs: each returns [(check name, passed, detail)] ===


def check(results, name, condition, detail=""):
    results.append((name, bool(condition), "" if condition else str(detail)))
    return bool(condition)


def json_messages(text):
    """grpcurl prints a stream as concatenated JSON objects."""
    decoder, pos, messages = json.JSONDecoder(), 0, []
    text = text.strip()
    while pos < len(text):
        message, end = decoder.raw_decode(text, pos)
        messages.append(message)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return messages


def job_grpcurl(addr):
    """grpcurl 1.8.6 (reflection v1alpha only), no proto files."""
    r = []
    grpcurl = [VENV_BIN / "grpcurl", "-plaintext", "-connect-timeout", "5", "-max-time", "60"]
    svc = "hailuo.v1.VideoGeneration"

    listed = run([*grpcurl, addr, "list"])
    check(r, "list shows the service, health and reflection",
          listed.code == 0 and {svc, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
          <= set(listed.out.split()), listed)

    described = run([*grpcurl, addr, "describe", svc])
    check(r, "describe shows the four RPCs with WatchTask and GenerateVideo streaming",
          described.code == 0
          and "rpc CreateTask ( .hailuo.v1.CreateTaskRequest ) returns ( .hailuo.v1.CreateTaskResponse );" in described.out
          and "rpc GetTask ( .hailuo.v1.GetTaskRequest ) returns ( .hailuo.v1.GetTaskResponse );" in described.out
          and "rpc WatchTask ( .hailuo.v1.WatchTaskRequest ) returns ( stream .hailuo.v1.WatchTaskResponse );" in described.out
          and "rpc GenerateVideo ( .hailuo.v1.GenerateVideoRequest ) returns ( stream .hailuo.v1.GenerateVideoResponse );"
          in described.out
          and "// The one call from prompt to video" in described.out,
          described)

    message = run([*grpcurl, addr, "describe", "hailuo.v1.CreateTaskRequest"])
    check(r, "describe CreateTaskRequest shows its fields",
          message.code == 0 and all(f in message.out for f in
                                    ["string prompt = 2;", "string image_url = 3;", "string end_image_url = 4;",
                                     ".hailuo.v1.VideoDuration duration = 5;", ".hailuo.v1.Resolution resolution = 6;"]),
          message)

    health = run([*grpcurl, addr, "grpc.health.v1.Health/Check"])
    check(r, "Health/Check is SERVING", health.code == 0 and '"status": "SERVING"' in health.out, health)

    bad = run([*grpcurl, "-d", '{"prompt": "", "image_url": "https://example.com/cat.png"}', addr, f"{svc}/CreateTask"])
    print("grpcurl: an empty prompt answers (exit %d):\n%s" % (bad.code, bad.err.rstrip()), flush=True)
    check(r, "an empty prompt exits 67 (64 + INVALID_ARGUMENT) with decoded details",
          bad.code == 67 and "Code: InvalidArgument" in bad.err and "Message: invalid request: prompt is required" in bad.err
          and '"reason":"INVALID_REQUEST"' in bad.err and '"fieldViolations":[{"field":"prompt"' in bad.err, bad)

    limited = run([*grpcurl, "-d", '{"prompt": "[sim:429] a cat", "image_url": "https://example.com/cat.png"}', addr,
                   f"{svc}/CreateTask"])
    check(r, "a rate-limited create exits 72 (64 + RESOURCE_EXHAUSTED) with a 3s RetryInfo",
          limited.code == 72 and "Code: ResourceExhausted" in limited.err and '"retryDelay":"3s"' in limited.err, limited)

    request = {"prompt": "a cat surfing a wave at sunset", "image_url": IMAGE,
               "duration": "VIDEO_DURATION_6_SECONDS", "resolution": "RESOLUTION_512P"}
    created = run([*grpcurl, "-d", json.dumps(request), addr, f"{svc}/CreateTask"])
    task_id = json.loads(created.out).get("taskId") if created.code == 0 else None
    if not check(r, "CreateTask returns a task id", task_id, created):
        return r

    got = run([*grpcurl, "-d", json.dumps({"task_id": task_id}), addr, f"{svc}/GetTask"])
    state = json.loads(got.out).get("task", {}).get("state") if got.code == 0 else None
    check(r, "GetTask shows the new task running", state in FULL_STATES[:3], got)

    watched = run([*grpcurl, "-d", json.dumps({"task_id": task_id}), addr, f"{svc}/WatchTask"], timeout=90)
    messages = json_messages(watched.out) if watched.code == 0 else []
    states = [m["task"]["state"] for m in messages if not m.get("heartbeat")]
    check(r, "WatchTask streams WAITING, QUEUING, GENERATING, SUCCEEDED and ends OK",
          watched.code == 0 and states == FULL_STATES, f"states {states}; {watched}")
    last = messages[-1]["task"] if messages else {}
    check(r, "the final message has the task id and video URLs",
          last.get("taskId") == task_id and last.get("videoUrls"), last)
    return r


def job_grpcurl_generate(addr):
    """GenerateVideo through grpcurl, beside the step-by-step job."""
    r = []
    grpcurl = [VENV_BIN / "grpcurl", "-plaintext", "-connect-timeout", "5", "-max-time", "60"]
    request = {"prompt": "a cat surfing a wave at sunset", "image_url": IMAGE, "duration": "VIDEO_DURATION_6_SECONDS"}
    generated = run([*grpcurl, "-d", json.dumps({"create": request}), addr,
                     "hailuo.v1.VideoGeneration/GenerateVideo"], timeout=90)
    messages = json_messages(generated.out) if generated.code == 0 else []
    states = [m["task"]["state"] for m in messages if "task" in m and not m.get("heartbeat")]
    check(r, "GenerateVideo sends the task id first, then WAITING..SUCCEEDED, and ends OK",
          generated.code == 0 and messages and set(messages[0]) == {"taskId"} and states == FULL_STATES,
          f"states {states}; {generated}")
    return r


def job_buf_lint(_addr):
    r = []
    lint = run([NODE_BIN / "buf", "lint"], timeout=60)
    check(r, "buf lint proto/ is clean (STANDARD except SERVICE_SUFFIX)", lint.code == 0, lint)
    return r


def tap_lines(r, result, prefix):
    """Counts the `ok NAME` / `not ok NAME: why` lines a client script prints."""
    seen = False
    for line in result.out.splitlines():
        if line.startswith("ok "):
            seen = check(r, f"{prefix}: {line[3:]}", True) or seen
        elif line.startswith("not ok "):
            seen = True
            check(r, f"{prefix}: {line[7:].split(':', 1)[0]}", False, line[7:])
    if not seen or (result.code != 0 and all(ok for _, ok, _ in r)):
        check(r, f"{prefix}: the script ran its checks", False, result)
    return r


def job_python_client(addr, simulator_url):
    result = run([VENV_BIN / "python", "tests/clients/python_client.py", addr, simulator_url],
                 env={"PYTHONPATH": str(OUT / "python")})
    return tap_lines([], result, "python")


# A caller token for the second gateway, the one with a callers file.
CALLER_TOKEN = "tok-python-" + uuid.uuid4().hex


def job_python_caller_tokens(addr):
    """A gateway of its own with GATEWAY_CALLERS_FILE: the Python client
    with its token, and without one (UNAUTHENTICATED, ErrorInfo decoded)."""
    import hashlib
    callers = OUT / "callers.toml"
    digest = hashlib.sha256(CALLER_TOKEN.encode()).hexdigest()
    callers.write_text(f'[[caller]]\nname = "python-team"\ntoken_sha256 = "{digest}"\ncreates_per_minute = 5\n')
    gateway = Gateway("gateway-callers.log", env={"GATEWAY_CALLERS_FILE": str(callers)})
    try:
        result = run([VENV_BIN / "python", "tests/clients/python_client.py", "--caller-tokens",
                      gateway.addr, CALLER_TOKEN], env={"PYTHONPATH": str(OUT / "python")})
    finally:
        gateway.stop()
    r = tap_lines([], result, "python caller tokens")
    log = gateway.log_path.read_text(errors="replace")
    check(r, "python caller tokens: the token is in no gateway log line", CALLER_TOKEN not in log)
    check(r, "python caller tokens: the caller's name is on its RPC log lines",
          re.search(r"caller=.?python-team", log), tail(log))
    return r


def job_node_client(addr):
    return tap_lines([], run(["node", "tests/clients/node_client.js", addr]), "node")


def example_checks(name, result, state_prefix):
    r = []
    states = [line.split()[1] for line in result.out.splitlines() if line.startswith("state ")]
    check(r, f"{name} exits 0 after the states WAITING..SUCCEEDED",
          result.code == 0 and states == [state_prefix + s for s in STATES], result)
    check(r, f"{name} prints the video URL", re.search(r"^video http://\S+\.mp4$", result.out, re.M), result)
    return r


def upload_checks(name, result):
    """An example that uploaded assets/first.png and followed its task to a video."""
    r = []
    uploaded = re.search(r"^uploaded (http://\S+) (\d+) bytes$", result.out, re.M)
    check(r, f"{name} uploads assets/first.png and kie.ai's file is those bytes",
          uploaded and int(uploaded.group(2)) == FIRST_PNG.stat().st_size
          and fetch(uploaded.group(1)) == FIRST_PNG.read_bytes(), result)
    video = re.search(r"^video (http://\S+)$", result.out, re.M)
    check(r, f"{name}: the task's video downloads as an MP4 (ftyp)", video and is_mp4(fetch(video.group(1))), result)
    return r


def job_python_example(addr):
    result = run([VENV_BIN / "python", "examples/python/watch.py", addr])
    return example_checks("examples/python/watch.py", result, "TASK_STATE_") + upload_checks("python", result)


def job_node_example(addr):
    result = run(["node", "examples/node/watch.js", addr])
    return example_checks("examples/node/watch.js", result, "TASK_STATE_") + upload_checks("node", result)


def job_rust_example(addr):
    return example_checks("examples/watch.rs", run([RUST_EXAMPLE, f"http://{addr}"]), "TASK_STATE_")


def cli(addr, *args, timeout=JOB_TIMEOUT):
    return run([GATEWAY, *args], timeout=timeout, env={"HAILUO_GATEWAY_ADDR": f"http://{addr}"})


def cli_states(out):
    return [line.split()[1] for line in out.splitlines() if line.startswith("state ")]


def job_cli_generate_wait(addr):
    r = []
    args = ["generate", "--prompt", "a cat surfing", "--image-url", IMAGE, "--duration", "6", "--resolution", "512p",
            "--request-id", f"cli-{uuid.uuid4()}", "--wait"]
    done = cli(addr, *args)
    lines = done.out.splitlines()
    check(r, "cli generate --wait exits 0 after plain state lines WAITING..SUCCEEDED",
          done.code == 0 and cli_states(done.out) == STATES and "\x1b" not in done.out, done)
    check(r, "cli generate --wait prints the id first and the video URL last",
          len(lines) >= 2 and re.fullmatch(r"[A-Za-z0-9_-]+", lines[0]) and re.fullmatch(r"http://\S+\.mp4", lines[-1]),
          done)
    if not lines:
        return r
    again = cli(addr, *args)
    check(r, "cli generate --wait with the same --request-id re-attaches to the same finished task",
          again.code == 0 and again.out.splitlines()[:1] == lines[:1] and cli_states(again.out) == ["SUCCEEDED"], again)
    finished = cli(addr, "watch", lines[0])
    check(r, "cli watch of a finished task shows its state as found, with no 'after 0.0s'",
          finished.code == 0 and finished.out.splitlines()[:1] == ["state SUCCEEDED"]
          and " after " not in finished.out, finished)
    got = cli(addr, "get", lines[0])
    check(r, "cli get shows the task SUCCEEDED with its video URL",
          got.code == 0 and f"task_id: {lines[0]}" in got.out and "state: SUCCEEDED" in got.out
          and f"video_url: {lines[-1]}" in got.out, got)
    return r


def job_cli_generate_then_watch(addr):
    r = []
    created = cli(addr, "generate", "--prompt", "a dog", "--image-url", IMAGE, "--end-image-url", IMAGE)
    task_id = created.out.strip()
    if not check(r, "cli generate prints only the task id",
                 created.code == 0 and re.fullmatch(r"[A-Za-z0-9_-]+", task_id), created):
        return r
    running = cli(addr, "get", task_id)
    check(r, "cli get shows the new task running",
          running.code == 0 and re.search(r"^state: (WAITING|QUEUING|GENERATING)$", running.out, re.M), running)
    watched = cli(addr, "watch", task_id)
    check(r, "cli watch follows the task to SUCCEEDED and prints the video URL",
          watched.code == 0 and cli_states(watched.out)[-1:] == ["SUCCEEDED"]
          and re.search(r"^http://\S+\.mp4$", watched.out, re.M), watched)
    return r


def job_cli_failed_task(addr):
    r = []
    failed = cli(addr, "generate", "--prompt", "[sim:fail] a cat", "--image-url", IMAGE, "--wait")
    check(r, "cli generate --wait on a FAILED task exits 3 with its fail_code and fail_message",
          failed.code == 3 and cli_states(failed.out)[-1:] == ["FAILED"]
          and "FAILED: fail_code 500: Your image was rejected by content moderation" in failed.err, failed)
    return r


def job_cli_errors(addr):
    r = []
    invalid = cli(addr, "generate", "--prompt", "", "--image-url", "file:///cat.png")
    check(r, "cli: an invalid request exits 1 showing code, reason and field violations",
          invalid.code == 1 and "error: INVALID_ARGUMENT:" in invalid.err
          and "reason: INVALID_REQUEST (domain hailuo-gateway)" in invalid.err
          and "field prompt: prompt is required" in invalid.err and "field image_url:" in invalid.err, invalid)
    limited = cli(addr, "generate", "--prompt", "[sim:429] a cat", "--image-url", IMAGE)
    check(r, "cli: a rate-limited create exits 1 showing RESOURCE_EXHAUSTED and the retry delay",
          limited.code == 1 and "error: RESOURCE_EXHAUSTED:" in limited.err
          and "reason: UPSTREAM_RATE_LIMITED (domain kie.ai)" in limited.err and "retry after: 3s" in limited.err, limited)
    missing = cli(addr, "get", "no_such_task")
    check(r, "cli: get of an unknown task exits 1 with NOT_FOUND / TASK_NOT_FOUND",
          missing.code == 1 and "error: NOT_FOUND:" in missing.err and "reason: TASK_NOT_FOUND" in missing.err, missing)
    usage = cli(addr, "generate", "--prompt", "a cat", "--image-url", IMAGE, "--duration", "7")
    check(r, "cli: a bad --duration is a usage error (exit 2) listing the allowed values",
          usage.code == 2 and "[possible values: 6, 10]" in usage.err, usage)
    usage = cli(addr, "generate", "--prompt", "a cat", "--image-url", IMAGE, "--resolution", "1080p")
    check(r, "cli: a bad --resolution is a usage error (exit 2) listing the allowed values",
          usage.code == 2 and "[possible values: 512p, 768p]" in usage.err, usage)
    missing_args = cli(addr, "generate")
    check(r, "cli: with HAILUO_GATEWAY_ADDR set, generate's missing arguments do not include --addr",
          missing_args.code == 2 and "--prompt" in missing_args.err and "--addr" not in missing_args.err, missing_args)
    helped = cli(addr, "generate", "--help")
    check(r, "cli: generate --help shows --request-id, --prompt-optimizer and that --addr defaults to HAILUO_GATEWAY_ADDR",
          helped.code == 0 and "--request-id" in helped.out and "--prompt-optimizer" in helped.out
          and "[default: $HAILUO_GATEWAY_ADDR" in helped.out, helped)
    unreachable = run([GATEWAY, "get", "t1", "--addr", "http://127.0.0.1:1"], timeout=30)
    check(r, "cli: an unreachable gateway exits 1 with a connect error",
          unreachable.code == 1 and "cannot connect to http://127.0.0.1:1" in unreachable.err, unreachable)
    return r


# === a watch that ends before its task (issue 16) ===


def start_watch(addr, task_id):
    """`watch TASK_ID` in a process of its own, once it printed a state line:
    (the process, the lines it printed so far) or (process, None)."""
    proc = subprocess.Popen(
        [str(GATEWAY), "watch", task_id],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HAILUO_GATEWAY_ADDR": f"http://{addr}"},
        start_new_session=True,
    )
    with _children_lock:
        _children.add(proc)
    first = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    return proc, first[0] if first and first[0].startswith("state ") else None


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout}s]"
    with _children_lock:
        _children.discard(proc)
    return Result(proc.returncode, out, err)


def job_cli_reattach(addr):
    r = []
    created = cli(addr, "generate", "--prompt", "a fox", "--image-url", IMAGE)
    task_id = created.out.strip()
    if not check(r, "cli generate (for the Ctrl-C check) prints the task id", created.code == 0 and task_id, created):
        return r
    proc, first = start_watch(addr, task_id)
    if first:
        proc.send_signal(signal.SIGINT)
    stopped = finish(proc)
    check(r, "cli watch stopped with Ctrl-C exits 130 and prints the command that follows the task again",
          first and stopped.code == 130
          and f"hailuo-gateway watch {task_id} --addr http://{addr}" in stopped.err, (first, stopped))

    # A gateway of its own, stopped while the watch runs.
    gateway = Gateway("gateway-reattach.log")
    try:
        created = cli(gateway.addr, "generate", "--prompt", "a fox", "--image-url", IMAGE)
        task_id = created.out.strip()
        proc, first = start_watch(gateway.addr, task_id)
        if first:
            os.kill(gateway.proc.pid, signal.SIGTERM)
        ended = finish(proc)
    finally:
        gateway.stop()
    check(r, "cli watch ended by the gateway's shutdown exits 1 with UNAVAILABLE and the command to re-attach",
          first and ended.code == 1 and "error: UNAVAILABLE:" in ended.err
          and f"hailuo-gateway watch {task_id} --addr http://{gateway.addr}" in ended.err, (first, ended))
    return r


# === the metrics an SRE scrapes (issue 16) ===


def scrape(url, accept=None):
    """(status, content type, body) of a GET; status 0 when unreachable."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, "", ""
    except OSError:
        return 0, "", ""


def sample(text, series):
    """The value of one series line (`name{labels}`) in a text exposition, or 0."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def metrics_checks(gateway):
    """After every job's traffic (errors, watches, callbacks, a repeated
    request_id, kie.ai's 429): the admin listener's exposition is clean for
    promtool and carries what an SRE alerts on; the callback listener has none."""
    r = []
    status, content_type, text = scrape(f"http://{gateway.admin_addr}/metrics")
    if not check(r, "GET /metrics on the admin listener answers Prometheus text 0.0.4",
                 status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)):
        return r
    (OUT / "metrics.txt").write_text(text)
    if shutil.which("promtool"):
        linted = subprocess.run(["promtool", "check", "metrics"], input=text, text=True, capture_output=True,
                                timeout=60)
        check(r, "promtool check metrics: clean (HELP, TYPE, names, units; no lint problems)",
              linted.returncode == 0 and not linted.stdout.strip() and not linted.stderr.strip(),
              f"exit {linted.returncode}: {linted.stdout}{linted.stderr}")
    else:
        print("metrics: promtool not installed; prometheus_client's parser only", flush=True)
    try:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
        from prometheus_client.parser import text_string_to_metric_families
        families = {f.name: f for f in text_string_to_metric_families(text)}
        check(r, "prometheus_client parses the text exposition, every family with help text",
              families and all(f.documentation for f in families.values()), sorted(families))
        status, content_type, om = scrape(f"http://{gateway.admin_addr}/metrics",
                                          "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        om_families = [f.name for f in openmetrics_families(om)]
        check(r, "Accept: application/openmetrics-text gets OpenMetrics that prometheus_client's parser takes",
              content_type.startswith("application/openmetrics-text") and om.endswith("# EOF\n")
              and "hailuo_gateway_rpcs" in om_families, (content_type, om_families))
    except Exception as e:  # noqa: BLE001 - a parse error is a failed check
        check(r, "prometheus_client parses both expositions", False, f"{type(e).__name__}: {e}")
    moved = {
        'hailuo_gateway_rpcs_total{method="CreateTask",caller="anonymous",code="INVALID_ARGUMENT"}': "an invalid request",
        'hailuo_gateway_upstream_rate_limited_total{endpoint="createTask"}': "kie.ai's 429 ([sim:429])",
        'hailuo_gateway_stream_duration_seconds_count{method="WatchTask"}': "watches",
        'hailuo_gateway_callbacks_total{outcome="accepted"}': "kie.ai's callbacks",
        'hailuo_gateway_idempotency_total{result="hit"}': "a repeated --request-id",
        'hailuo_gateway_upstream_calls_total{endpoint="fileStreamUpload",kie_code="200"}': "uploads",
        "process_cpu_seconds_total": "the process",
    }
    counted = {series: sample(text, series) for series in moved}
    check(r, "the traffic shows: " + ", ".join(moved.values()),
          all(v > 0 for v in counted.values()), {s: v for s, v in counted.items() if v <= 0})
    for family in ["hailuo_gateway_build_info gauge", "hailuo_gateway_watch_heartbeats_total counter",
                   "hailuo_gateway_upstream_in_flight gauge", "process_open_fds gauge"]:
        check(r, f"# TYPE {family}", f"# TYPE {family}\n" in text)
    status, _, _ = scrape(f"http://{gateway.http_addr}/metrics")
    check(r, "the callback listener (kie.ai's, often public) answers /metrics 404", status == 404, status)
    return r


# === local images in, videos out (issue 13) ===


def fetch(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def is_mp4(data):
    return len(data) > 8 and data[4:8] == b"ftyp"


def banner_value(pattern, timeout=5.0):
    """The first match of `pattern` in the sandbox banner (the gateway's stdout, in its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, (OUT / "gateway.log").read_text(errors="replace"), re.M)
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"no {pattern!r} in the sandbox banner")


def sim_creates(prompt):
    """The createTask bodies kie.ai's simulator received with this prompt."""
    requests = json.loads(fetch(banner_value(r"kie\.ai is simulated at (\S+)") + "/sim/requests"))
    return [q["body"] for q in requests
            if q["path"] == "/api/v1/jobs/createTask" and (q["body"] or {}).get("input", {}).get("prompt") == prompt]


def job_grpcurl_upload(addr):
    """The banner's UploadImage command, verbatim, then the task to a downloaded MP4."""
    r = []
    grpcurl = [VENV_BIN / "grpcurl", "-plaintext", "-connect-timeout", "5", "-max-time", "60"]
    svc = "hailuo.v1.VideoGeneration"
    command = banner_value(r"^\s*(.*\| grpcurl .*/UploadImage)$")
    command = command.replace("| grpcurl ", f"| {grpcurl[0]} -connect-timeout 5 -max-time 60 ", 1)
    uploaded = run(["bash", "-c", command])
    answer = json.loads(uploaded.out) if uploaded.code == 0 else {}
    if not check(r, "the banner's grpcurl command uploads assets/first.png (url, expireTime, size, image/png)",
                 answer.get("url", "").startswith("http://") and answer.get("expireTime")
                 and answer.get("sizeBytes") == str(FIRST_PNG.stat().st_size) and answer.get("contentType") == "image/png",
                 uploaded):
        return r
    check(r, "the uploaded file serves the PNG's own bytes", fetch(answer["url"]) == FIRST_PNG.read_bytes(), answer)

    created = run([*grpcurl, "-d", json.dumps({"prompt": "a cat from a file", "image_url": answer["url"],
                                               "duration": "VIDEO_DURATION_6_SECONDS"}), addr, f"{svc}/CreateTask"])
    task_id = json.loads(created.out).get("taskId") if created.code == 0 else None
    if not check(r, "CreateTask takes the uploaded URL", task_id, created):
        return r
    watched = run([*grpcurl, "-d", json.dumps({"task_id": task_id}), addr, f"{svc}/WatchTask"], timeout=90)
    states = [m["task"]["state"] for m in json_messages(watched.out)] if watched.code == 0 else []
    check(r, "the task from the uploaded image ends SUCCEEDED", states[-1:] == ["TASK_STATE_SUCCEEDED"], watched)
    links = run([*grpcurl, "-d", json.dumps({"task_id": task_id}), addr, f"{svc}/GetDownloadLinks"])
    link = (json.loads(links.out).get("links") or [{}])[0] if links.code == 0 else {}
    check(r, "GetDownloadLinks gives a fresh link with its expiry, which downloads an MP4 (ftyp)",
          link.get("url") and link.get("expireTime") and is_mp4(fetch(link["url"])), links)
    return r


def job_cli_image_download(addr):
    """generate --image/--end-image from files, --request-id, then download -o."""
    r = []
    # A failed task for `download`, generated meanwhile.
    failing = ThreadPoolExecutor(1)
    failed_run = failing.submit(cli, addr, "generate", "--prompt", "[sim:fail] a cat", "--image", "assets/first.png",
                                "--wait")
    failing.shutdown(wait=False)
    prompt = f"a cat from two files {uuid.uuid4()}"
    request_id = f"cli-{uuid.uuid4()}"
    args = ["generate", "--prompt", prompt, "--image", "assets/first.png", "--end-image", "assets/last.png",
            "--request-id", request_id, "--prompt-optimizer", "--duration", "6"]
    done = cli(addr, *args, "--wait")
    lines = done.out.splitlines()
    if not check(r, "cli generate --image ./file.png --end-image ./file.png --wait exits 0 at SUCCEEDED with a video URL",
                 done.code == 0 and cli_states(done.out)[-1:] == ["SUCCEEDED"]
                 and re.fullmatch(r"http://\S+\.mp4", lines[-1]), done):
        return r
    task_id = lines[0]
    creates = sim_creates(prompt)
    frames = creates[0]["input"] if len(creates) == 1 else {}
    check(r, "kie.ai got one createTask with both frames as uploaded URLs and prompt_optimizer true",
          len(creates) == 1 and frames.get("prompt_optimizer") is True
          and fetch(frames.get("image_url", "")) == FIRST_PNG.read_bytes()
          and fetch(frames.get("end_image_url", "")) == LAST_PNG.read_bytes(), creates)
    again = cli(addr, *args)
    check(r, "the same command with the same --request-id prints the same task and creates nothing more",
          again.code == 0 and again.out.strip() == task_id and len(sim_creates(prompt)) == 1, again)

    video = OUT / "cli-video.mp4"
    video.unlink(missing_ok=True)
    saved = cli(addr, "download", task_id, "-o", video)
    check(r, "cli download -o saves the MP4 (ftyp) and prints its path, leaving no .part file",
          saved.code == 0 and saved.out.strip() == str(video) and video.exists() and is_mp4(video.read_bytes())
          and not (OUT / ".cli-video.mp4.part").exists(), saved)

    missing = cli(addr, "generate", "--prompt", "a cat", "--image", "./no-such-frame.png")
    check(r, "cli: an --image file that does not exist is a usage error (exit 2) naming it",
          missing.code == 2 and "error: --image ./no-such-frame.png:" in missing.err, missing)
    not_image = cli(addr, "generate", "--prompt", "a cat", "--image", "README.md")
    check(r, "cli: an --image file that is no image exits 1 with the gateway's field violation",
          not_image.code == 1 and "field image_data:" in not_image.err, not_image)

    failed = failed_run.result()
    failed_id = failed.out.splitlines()[0] if failed.out else ""
    no_video = cli(addr, "download", failed_id, "-o", OUT / "cli-failed.mp4")
    check(r, "cli download of a FAILED task exits 3 with TASK_NOT_SUCCEEDED and saves nothing",
          failed.code == 3 and no_video.code == 3 and "reason: TASK_NOT_SUCCEEDED" in no_video.err
          and not (OUT / "cli-failed.mp4").exists(), f"{failed}; {no_video}")
    return r


# === TLS: a second sandbox gateway with client certificates required ===


def make_pki(directory):
    """A CA, the gateway's certificate (localhost, 127.0.0.1) and a client's
    (a SPIFFE URI SAN), made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl = ["openssl"]

    def ok(cmd):
        result = run([*openssl, *cmd])
        if result.code != 0:
            raise RuntimeError(f"openssl {cmd[0]}: {result}")

    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    ok(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=hailuo-gateway clients test CA", "-keyout", ca_key, "-out", ca,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])

    def leaf(name, san, usage):
        key, csr, cert, ext = (directory / f"{name}.{x}" for x in ("key", "csr", "pem", "ext"))
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
        ok(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", key, "-out", csr])
        ok(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
            "-extfile", ext, "-out", cert])
        return cert, key

    server = leaf("gateway", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    client = leaf("client", "URI:spiffe://clients.test/ns/ci/sa/run-py,DNS:run-py.clients.test", "clientAuth")
    return ca, server, client


PYTHON_TLS = """
import sys, grpc
from grpc_status import rpc_status
from hailuo.v1 import video_generation_pb2 as pb
from hailuo.v1 import video_generation_pb2_grpc as pb_grpc
addr, ca, cert, key = sys.argv[1:5]
read = lambda p: open(p, "rb").read()
creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
with grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
    stub = pb_grpc.VideoGenerationStub(channel)
    try:
        stub.GetTask(pb.GetTaskRequest(task_id="no-such-task"), timeout=10)
        print("answered OK")
    except grpc.RpcError as e:
        # A status with google.rpc details can only come from the gateway.
        status = rpc_status.from_call(e)
        print(f"answered {e.code().name} details={status is not None}")
"""


def job_tls(_addr):
    """grpcurl (-cacert, -cert/-key) and Python grpcio (ssl_channel_credentials)
    against a gateway with TLS and client certificates on."""
    r = []
    if run(["openssl", "version"]).code != 0:
        check(r, "tls: openssl is installed (it makes the certificates)", False, "openssl not found")
        return r
    ca, (cert, key), (client_cert, client_key) = make_pki(OUT / "tls")
    gateway = Gateway("gateway-tls.log", extra_args=["--tls-cert-file", cert, "--tls-key-file", key,
                                          "--tls-client-ca-file", ca])
    try:
        addr = gateway.addr.replace("127.0.0.1", "localhost")
        grpcurl = [VENV_BIN / "grpcurl", "-connect-timeout", "5", "-max-time", "30", "-cacert", ca]
        mtls = [*grpcurl, "-cert", client_cert, "-key", client_key]
        listed = run([*mtls, addr, "list"])
        check(r, "tls: grpcurl -cacert -cert -key lists the service through reflection over mutual TLS",
              listed.code == 0 and "hailuo.v1.VideoGeneration" in listed.out.split(), listed)
        health = run([*mtls, addr, "grpc.health.v1.Health/Check"])
        check(r, "tls: grpcurl health Check over mutual TLS is SERVING",
              health.code == 0 and '"SERVING"' in health.out, health)
        no_cert = run([*grpcurl, addr, "list"])
        check(r, "tls: grpcurl without a client certificate is refused",
              no_cert.code != 0 and "hailuo.v1.VideoGeneration" not in no_cert.out, no_cert)
        plaintext = run([VENV_BIN / "grpcurl", "-plaintext", "-connect-timeout", "5", "-max-time", "30",
                         addr, "list"])
        check(r, "tls: grpcurl -plaintext gets nothing from the TLS listener",
              plaintext.code != 0 and "hailuo.v1.VideoGeneration" not in plaintext.out, plaintext)
        python = run([VENV_BIN / "python", "-c", PYTHON_TLS, gateway.addr, ca, client_cert, client_key],
                     env={"PYTHONPATH": str(OUT / "python")})
        check(r, "tls: Python grpcio with ssl_channel_credentials gets the gateway's own answer (NOT_FOUND with details)",
              python.code == 0 and "answered NOT_FOUND details=True" in python.out, python)
    finally:
        gateway.stop()
    return r


JOBS = [
    job_grpcurl,
    job_grpcurl_generate,
    job_python_client,
    job_node_client,
    job_python_caller_tokens,
    job_python_example,
    job_node_example,
    job_rust_example,
    job_cli_generate_wait,
    job_cli_generate_then_watch,
    job_cli_failed_task,
    job_cli_errors,
    job_cli_reattach,
    job_buf_lint,
    job_grpcurl_upload,
    job_cli_image_download,
    job_tls,
]


def timed(job, addr, simulator_url):
    started = time.monotonic()
    try:
        # The jobs that look at kie.ai's side take the simulator's URL too.
        wants_simulator = job.__code__.co_argcount > 1
        results = job(addr, simulator_url) if wants_simulator else job(addr)
    except Exception as e:  # noqa: BLE001 - a crashed job is a failed check
        results = [(f"{job.__name__} ran", False, f"{type(e).__name__}: {e}")]
    return results, time.monotonic() - started


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for path in [GATEWAY, RUST_EXAMPLE, VENV_BIN / "grpcurl", NODE_BIN / "buf"]:
        if not path.exists():
            print(f"clients: missing {path}: run scripts/clients-setup.sh and cargo build --examples first")
            print("clients: 0 passed, 1 failed")
            return 1
    # Idempotent and quick: brings the Python stubs up to date with proto/
    # when this driver is run on its own after a proto edit.
    setup = run(["bash", "scripts/clients-setup.sh"], timeout=900)
    if setup.code != 0:
        print(f"clients: scripts/clients-setup.sh failed: {setup}")
        print("clients: 0 passed, 1 failed")
        return 1
    started = time.monotonic()
    gateway = None
    passed = failed = 0
    try:
        gateway = Gateway()
        print(f"clients: sandbox gateway on {gateway.addr} (log {gateway.log_path.relative_to(ROOT)})", flush=True)
        simulator_url = gateway.simulator_url()
        with ThreadPoolExecutor(len(JOBS)) as pool:
            futures = [(job.__name__[4:], pool.submit(timed, job, gateway.addr, simulator_url)) for job in JOBS]
            for name, future in futures:
                results, seconds = future.result()
                print(f"-- {name} ({seconds:.1f}s)")
                for check_name, ok, detail in results:
                    print(f"  {'ok  ' if ok else 'FAIL'} {check_name}" + ("" if ok else f"\n       {detail}"))
                    passed += ok
                    failed += not ok
        print("-- metrics (after every job)")
        for check_name, ok, detail in metrics_checks(gateway):
            print(f"  {'ok  ' if ok else 'FAIL'} {check_name}" + ("" if ok else f"\n       {detail}"))
            passed += ok
            failed += not ok
        if failed:
            print(f"clients: gateway log tail:\n{gateway.log_tail()}")
    except Exception as e:  # noqa: BLE001 - reported as a failure below
        print(f"clients: {type(e).__name__}: {e}")
        failed += 1
    finally:
        if gateway is not None:
            gateway.stop()
        with _children_lock:
            for proc in list(_children):
                kill(proc)
    if gateway is not None:
        # The whole run's gateway log, checked for the sandbox's kie.ai key.
        log = gateway.log_path.read_text(errors="replace")
        leaked = SANDBOX_KEY in log
        print(f"-- secrets\n  {'FAIL' if leaked else 'ok  '} the kie.ai key is in no gateway log line ({len(log.splitlines())} lines)")
        passed += not leaked
        failed += leaked
        exited = gateway.proc.returncode
        print(f"  {'ok  ' if exited == 0 else 'FAIL'} the gateway exits 0 on SIGTERM (got {exited})")
        passed += exited == 0
        failed += exited != 0
    print(f"clients: all jobs took {time.monotonic() - started:.1f}s")
    print(f"clients: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

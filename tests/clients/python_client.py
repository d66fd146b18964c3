"""Python client checks against a running sandbox gateway, with stubs that
grpcio-tools generated from proto/ (PYTHONPATH=target/clients/python).

    python tests/clients/python_client.py 127.0.0.1:PORT SIMULATOR_URL

Prints one `ok NAME` or `not ok NAME: why` line per check (tests/clients/run.py
counts them) and exits 1 if any failed. The checks run concurrently.
"""

import json
import sys
import time
import traceback
import uuid
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hailuo.v1 import video_generation_pb2 as pb
from hailuo.v1 import video_generation_pb2_grpc as pb_grpc

IMAGE = "https://example.com/cat.png"
EXPECTED_STATES = ["TASK_STATE_WAITING", "TASK_STATE_QUEUING", "TASK_STATE_GENERATING", "TASK_STATE_SUCCEEDED"]


def expect_error(call, code):
    """Runs `call`, which must fail with `code`; returns its google.rpc.Status."""
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == code, f"code {e.code()} ({e.details()}), want {code}"
        status = rpc_status.from_call(e)
        assert status is not None, "no grpc-status-details-bin trailer"
        assert status.code == code.value[0], f"details code {status.code}"
        return status
    raise AssertionError(f"call succeeded, want {code}")


def detail(status, message_type):
    """The detail of this type: tonic-types orders details its own way."""
    for any_detail in status.details:
        if any_detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            any_detail.Unpack(message)
            return message
    raise AssertionError(f"no {message_type.DESCRIPTOR.full_name} in {[d.type_url for d in status.details]}")


def a_task_is_created_watched_to_success_and_its_mp4_downloads(client):
    created = client.CreateTask(
        pb.CreateTaskRequest(
            prompt="a cat surfing a wave at sunset",
            image_url=IMAGE,
            duration=pb.VIDEO_DURATION_6_SECONDS,
            resolution=pb.RESOLUTION_512P,
        ),
        timeout=30,
    )
    assert created.task_id, "empty task_id"

    states, last = [], None
    for message in client.WatchTask(pb.WatchTaskRequest(task_id=created.task_id), timeout=90):
        assert message.task.task_id == created.task_id, message.task.task_id
        if message.heartbeat:
            continue
        states.append(pb.TaskState.Name(message.task.state))
        last = message.task
    assert states == EXPECTED_STATES, f"states {states}"
    assert last.video_urls, "no video_urls"
    assert last.HasField("complete_time"), "no complete_time"

    with urllib.request.urlopen(last.video_urls[0], timeout=15) as response:
        head = response.read(12)
    assert head[4:8] == b"ftyp", f"not an MP4: {head!r}"

    got = client.GetTask(pb.GetTaskRequest(task_id=created.task_id), timeout=30).task
    assert got.state == pb.TASK_STATE_SUCCEEDED, pb.TaskState.Name(got.state)
    assert list(got.video_urls) == list(last.video_urls), got.video_urls
    assert got.model == "hailuo/02-image-to-video-standard", got.model


def an_empty_prompt_is_invalid_argument_with_a_bad_request(client):
    status = expect_error(
        lambda: client.CreateTask(pb.CreateTaskRequest(prompt="", image_url=IMAGE), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad = detail(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["prompt"], bad
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_REQUEST", "hailuo-gateway"), info


def a_rate_limited_create_is_resource_exhausted_with_a_retry_delay(client):
    status = expect_error(
        lambda: client.CreateTask(pb.CreateTaskRequest(prompt="[sim:429] a cat", image_url=IMAGE), timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    retry = detail(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToSeconds() == 3, retry
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("UPSTREAM_RATE_LIMITED", "kie.ai"), info
    assert info.metadata["kie_code"] == "429", info.metadata


def an_unknown_task_is_not_found(client):
    status = expect_error(
        lambda: client.GetTask(pb.GetTaskRequest(task_id="no_such_task"), timeout=30),
        grpc.StatusCode.NOT_FOUND,
    )
    assert detail(status, error_details_pb2.ErrorInfo).reason == "TASK_NOT_FOUND"


def a_lost_create_answer_is_never_paid_twice_and_a_request_id_retry_gets_the_task(client):
    """[sim:drop-create]: the simulator makes the task, then hangs up."""
    request_id = f"py-{uuid.uuid4()}"
    request = pb.CreateTaskRequest(prompt="[sim:drop-create] a cat", image_url=IMAGE, request_id=request_id)
    status = expect_error(lambda: client.CreateTask(request, timeout=30), grpc.StatusCode.UNAVAILABLE)
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("CREATE_OUTCOME_UNKNOWN", "kie.ai"), info
    assert info.metadata["request_id"] == request_id, info.metadata
    retry = detail(status, error_details_pb2.RetryInfo)
    # Retry as a client would, honouring RetryInfo: the task once kie.ai's
    # callback (at the end of the sandbox task, ~13 s) has named it.
    deadline = time.monotonic() + 45
    while True:
        time.sleep(min(retry.retry_delay.ToSeconds(), 2))
        try:
            task_id = client.CreateTask(request, timeout=30).task_id
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{e.code()} {e.details()}"
            assert time.monotonic() < deadline, "the task id was never learned"
    got = client.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=30).task
    assert got.state == pb.TASK_STATE_SUCCEEDED, pb.TaskState.Name(got.state)

    # Without a request_id the caller is told plainly, with no RetryInfo.
    plain = pb.CreateTaskRequest(prompt="[sim:drop-create] a dog", image_url=IMAGE)
    status = expect_error(lambda: client.CreateTask(plain, timeout=30), grpc.StatusCode.UNKNOWN)
    assert detail(status, error_details_pb2.ErrorInfo).reason == "CREATE_OUTCOME_UNKNOWN"
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details), "RetryInfo"


def generate_video_cancelled_midway_resumes_by_request_id_to_success_with_one_create(client):
    """The real binary: a GenerateVideo stream cancelled after the task's
    first state, then the same call again with the same request_id."""
    request_id = f"py-gen-{uuid.uuid4()}"
    request = pb.GenerateVideoRequest(
        create=pb.CreateTaskRequest(prompt=f"a cat {request_id}", image_url=IMAGE, request_id=request_id)
    )
    first_call = client.GenerateVideo(request, timeout=90)
    first = next(first_call)
    assert first.task_id and not first.HasField("task"), first
    seen = next(first_call)
    assert seen.task.state == pb.TASK_STATE_WAITING, pb.TaskState.Name(seen.task.state)
    first_call.cancel()

    messages = list(client.GenerateVideo(request, timeout=90))
    assert all(m.task_id == first.task_id for m in messages), [m.task_id for m in messages]
    states = [pb.TaskState.Name(m.task.state) for m in messages if m.HasField("task") and not m.heartbeat]
    assert states[-1] == "TASK_STATE_SUCCEEDED", states
    assert messages[-1].task.video_urls, "no video_urls"

    with urllib.request.urlopen(f"{SIMULATOR_URL}/sim/requests", timeout=15) as response:
        received = json.load(response)
    creates = [r for r in received if r["path"].endswith("/createTask") and request_id in json.dumps(r.get("body"))]
    assert len(creates) == 1, f"{len(creates)} createTask calls for one request_id"


def generate_video_with_no_credits_fails_before_any_message(client):
    request = pb.GenerateVideoRequest(create=pb.CreateTaskRequest(prompt="[sim:402] a cat", image_url=IMAGE))
    status = expect_error(lambda: list(client.GenerateVideo(request, timeout=30)), grpc.StatusCode.FAILED_PRECONDITION)
    assert detail(status, error_details_pb2.ErrorInfo).reason == "INSUFFICIENT_CREDITS"


CHECKS = [
    a_task_is_created_watched_to_success_and_its_mp4_downloads,
    an_empty_prompt_is_invalid_argument_with_a_bad_request,
    a_rate_limited_create_is_resource_exhausted_with_a_retry_delay,
    an_unknown_task_is_not_found,
    a_lost_create_answer_is_never_paid_twice_and_a_request_id_retry_gets_the_task,
    generate_video_cancelled_midway_resumes_by_request_id_to_success_with_one_create,
    generate_video_with_no_credits_fails_before_any_message,
]

SIMULATOR_URL = None


def run(check, client):
    try:
        check(client)
        return f"ok {check.__name__}"
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        where = traceback.extract_tb(e.__traceback__)[-1]
        return f"not ok {check.__name__}: {type(e).__name__}: {e} (line {where.lineno})"


def with_a_token_the_caller_is_named_and_its_quota_shown(client, token):
    quota = client.GetQuota(pb.GetQuotaRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert quota.caller == "python-team", quota
    names = [q.name for q in quota.quotas]
    assert names == ["creates_per_minute"], names
    assert quota.quotas[0].limit == 5 and quota.quotas[0].remaining == 5, quota


def without_a_token_a_call_is_unauthenticated_with_error_info(client, token):
    status = expect_error(
        lambda: client.CreateTask(pb.CreateTaskRequest(prompt="a cat", image_url=IMAGE), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    info = detail(status, error_details_pb2.ErrorInfo)
    assert info.reason == "CALLER_UNAUTHENTICATED", info
    assert info.domain == "hailuo-gateway", info
    wrong = expect_error(
        lambda: client.GetQuota(pb.GetQuotaRequest(), metadata=[("authorization", "Bearer " + token[::-1])],
                                timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert detail(wrong, error_details_pb2.ErrorInfo).reason == "CALLER_UNAUTHENTICATED"


CALLER_CHECKS = [
    with_a_token_the_caller_is_named_and_its_quota_shown,
    without_a_token_a_call_is_unauthenticated_with_error_info,
]


def caller_tokens_main(addr, token):
    """`--caller-tokens ADDR TOKEN`: a gateway with a callers file."""
    lines = []
    with grpc.insecure_channel(addr) as channel:
        client = pb_grpc.VideoGenerationStub(channel)
        for check in CALLER_CHECKS:
            lines.append(run(lambda c: check(c, token), client).replace("<lambda>", check.__name__))
    for line in lines:
        print(line.replace("\n", " "))
    return 1 if any(line.startswith("not ok") for line in lines) else 0


def main():
    global SIMULATOR_URL
    if sys.argv[1] == "--caller-tokens":
        return caller_tokens_main(sys.argv[2], sys.argv[3])
    addr, SIMULATOR_URL = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(addr) as channel:
        client = pb_grpc.VideoGenerationStub(channel)
        with ThreadPoolExecutor(len(CHECKS)) as pool:
            lines = list(pool.map(lambda check: run(check, client), CHECKS))
    for line in lines:
        print(line.replace("\n", " "))
    return 1 if any(line.startswith("not ok") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())

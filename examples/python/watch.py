"""Create a video task on hailuo-gateway and watch it until it ends.

    bash scripts/clients-setup.sh        # venv + stubs generated from proto/
    cargo run -- --sandbox &             # a gateway on localhost:50051
    target/clients/venv/bin/python examples/python/watch.py localhost:50051
"""

import sys
from pathlib import Path

import grpc

# The stubs scripts/clients-setup.sh generated with grpcio-tools.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "target" / "clients" / "python"))
from hailuo.v1 import video_generation_pb2 as pb  # noqa: E402
from hailuo.v1 import video_generation_pb2_grpc as pb_grpc  # noqa: E402


def main() -> int:
    addr = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
    with grpc.insecure_channel(addr) as channel:
        client = pb_grpc.VideoGenerationStub(channel)
        created = client.CreateTask(
            pb.CreateTaskRequest(
                prompt="a cat surfing a wave at sunset",
                image_url="https://example.com/cat.png",
                duration=pb.VIDEO_DURATION_6_SECONDS,
                resolution=pb.RESOLUTION_768P,
            ),
            timeout=30,
        )
        print("task", created.task_id)

        # The current state at once, then one message per change; the stream
        # ends after SUCCEEDED or FAILED.
        task = None
        for message in client.WatchTask(pb.WatchTaskRequest(task_id=created.task_id), timeout=600):
            if message.heartbeat:
                continue
            task = message.task
            print("state", pb.TaskState.Name(task.state))

    if task is not None and task.state == pb.TASK_STATE_SUCCEEDED:
        for url in task.video_urls:
            print("video", url)
        return 0
    if task is not None:
        print("failed:", task.fail_code, task.fail_message, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

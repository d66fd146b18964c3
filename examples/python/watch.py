"""Create a video task on hailuo-gateway from a local image and watch it
until it ends.

    bash scripts/clients-setup.sh        # venv + stubs generated from proto/
    cargo run -- --sandbox &             # a gateway on localhost:50051
    target/clients/venv/bin/python examples/python/watch.py localhost:50051 [IMAGE]
"""

import sys
from pathlib import Path

import grpc

# The stubs scripts/clients-setup.sh generated with grpcio-tools.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "target" / "clients" / "python"))
from hailuo.v1 import video_generation_pb2 as pb  # noqa: E402
from hailuo.v1 import video_generation_pb2_grpc as pb_grpc  # noqa: E402

# A small PNG in the repository; any JPEG, PNG or WebP of at most 10 MiB.
FIRST_FRAME = Path(__file__).resolve().parents[2] / "assets" / "first.png"


def upload_image(client, path) -> str:
    """Streams a local image to UploadImage; returns the URL for image_url.

    The URL serves several tasks for 24 hours; for one task, putting the
    bytes in CreateTask's image_data instead does both in one call.
    """
    path = Path(path)

    def messages():
        yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(file_name=path.name))
        with path.open("rb") as image:
            while chunk := image.read(256 * 1024):
                yield pb.UploadImageRequest(chunk=chunk)

    uploaded = client.UploadImage(messages(), timeout=60)
    print("uploaded", uploaded.url, uploaded.size_bytes, "bytes")
    return uploaded.url


def main() -> int:
    addr = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
    image = sys.argv[2] if len(sys.argv) > 2 else FIRST_FRAME
    with grpc.insecure_channel(addr) as channel:
        client = pb_grpc.VideoGenerationStub(channel)
        image_url = upload_image(client, image)
        created = client.CreateTask(
            pb.CreateTaskRequest(
                prompt="a cat surfing a wave at sunset",
                image_url=image_url,
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

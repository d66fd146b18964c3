"""Generate a video with hailuo-gateway from a local image: UploadImage, then
one GenerateVideo call from prompt to video URL.

    bash scripts/clients-setup.sh        # venv + stubs generated from proto/
    cargo run -- --sandbox &             # a gateway on localhost:50051
    target/clients/venv/bin/python examples/python/watch.py localhost:50051 [IMAGE]
"""

import sys
import uuid
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
        # request_id makes the call safe to repeat: calling again with the same
        # request (after a broken connection, say) follows the same task instead
        # of paying for a second video.
        request = pb.GenerateVideoRequest(
            create=pb.CreateTaskRequest(
                prompt="a cat surfing a wave at sunset",
                image_url=image_url,
                duration=pb.VIDEO_DURATION_6_SECONDS,
                resolution=pb.RESOLUTION_768P,
                request_id=str(uuid.uuid4()),
            )
        )
        # One call from prompt to video: the first message carries the new
        # task's id, then one message per state change; the stream ends after
        # SUCCEEDED or FAILED.
        task = None
        for message in client.GenerateVideo(request, timeout=600):
            if not message.HasField("task"):
                print("task", message.task_id)
                continue
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

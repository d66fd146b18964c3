// Generate a video with hailuo-gateway from a local image: UploadImage, then
// one GenerateVideo call from prompt to video URL.
//
//   npm ci                       # @grpc/grpc-js + @grpc/proto-loader
//   cargo run -- --sandbox &     # a gateway on localhost:50051
//   node examples/node/watch.js localhost:50051 [IMAGE]
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync('hailuo/v1/video_generation.proto', {
  includeDirs: [path.join(__dirname, '..', '..', 'proto')],
  keepCase: true, // field names as in the proto: task_id, image_url
  longs: String,
  enums: String, // states as names: "TASK_STATE_SUCCEEDED"
  defaults: true,
});
const { hailuo } = grpc.loadPackageDefinition(definition);

const addr = process.argv[2] || 'localhost:50051';
const client = new hailuo.v1.VideoGeneration(addr, grpc.credentials.createInsecure());
// A small PNG in the repository; any JPEG, PNG or WebP of at most 10 MiB.
const image = process.argv[3] || path.join(__dirname, '..', '..', 'assets', 'first.png');

// Streams a local image to UploadImage and calls back with the URL for
// image_url. The URL serves several tasks for 24 hours; for one task,
// putting the bytes in CreateTask's image_data instead does both in one call.
function uploadImage(file, done) {
  const call = client.UploadImage({ deadline: Date.now() + 60_000 }, (err, uploaded) => {
    if (err) {
      console.error(`UploadImage failed: ${grpc.status[err.code]}: ${err.details}`);
      process.exit(1);
    }
    console.log('uploaded', uploaded.url, uploaded.size_bytes, 'bytes');
    done(uploaded.url);
  });
  call.write({ metadata: { file_name: path.basename(file) } });
  const chunks = fs.createReadStream(file, { highWaterMark: 256 * 1024 });
  chunks.on('data', (chunk) => {
    // Read no faster than the gateway takes the bytes.
    if (!call.write({ chunk })) {
      chunks.pause();
      call.once('drain', () => chunks.resume());
    }
  });
  chunks.on('end', () => call.end());
  chunks.on('error', (e) => {
    console.error(`cannot read ${file}: ${e.message}`);
    process.exit(1);
  });
}

// request_id makes the call safe to repeat: calling again with the same
// request (after a broken connection, say) follows the same task instead of
// paying for a second video.
const request = {
  create: {
    prompt: 'a cat surfing a wave at sunset',
    image_url: '', // set to the uploaded image's URL below
    duration: 'VIDEO_DURATION_6_SECONDS',
    resolution: 'RESOLUTION_768P',
    request_id: crypto.randomUUID(),
  },
};
uploadImage(image, (imageUrl) => {
  request.create.image_url = imageUrl;
  // One call from prompt to video: the first message carries the new task's
  // id, then one message per state change; the stream ends after SUCCEEDED or
  // FAILED.
  let task = null;
  const stream = client.GenerateVideo(request, { deadline: Date.now() + 600_000 });
  stream.on('data', (message) => {
    if (!message.task) {
      console.log('task', message.task_id);
      return;
    }
    if (message.heartbeat) return;
    task = message.task;
    console.log('state', task.state);
  });
  stream.on('error', (e) => {
    console.error(`GenerateVideo failed: ${grpc.status[e.code]}: ${e.details}`);
    process.exit(1);
  });
  stream.on('end', () => {
    client.close();
    if (task && task.state === 'TASK_STATE_SUCCEEDED') {
      for (const url of task.video_urls) console.log('video', url);
    } else {
      console.error('task ended', task && task.state, task && task.fail_code, task && task.fail_message);
      process.exitCode = 1;
    }
  });
});

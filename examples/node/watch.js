// Generate a video with hailuo-gateway: one GenerateVideo call, from prompt
// to video URL.
//
//   npm ci                       # @grpc/grpc-js + @grpc/proto-loader
//   cargo run -- --sandbox &     # a gateway on localhost:50051
//   node examples/node/watch.js localhost:50051
'use strict';

const crypto = require('node:crypto');
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

// request_id makes the call safe to repeat: calling again with the same
// request (after a broken connection, say) follows the same task instead of
// paying for a second video.
const request = {
  create: {
    prompt: 'a cat surfing a wave at sunset',
    image_url: 'https://example.com/cat.png',
    duration: 'VIDEO_DURATION_6_SECONDS',
    resolution: 'RESOLUTION_768P',
    request_id: crypto.randomUUID(),
  },
};

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

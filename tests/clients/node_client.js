// Node client checks against a running sandbox gateway, with @grpc/grpc-js
// and @grpc/proto-loader loading proto/.
//
//   node tests/clients/node_client.js 127.0.0.1:PORT
//
// Prints one `ok NAME` or `not ok NAME: why` line per check
// (tests/clients/run.py counts them) and exits 1 if any failed. The checks
// run concurrently.
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const definition = protoLoader.loadSync('hailuo/v1/video_generation.proto', {
  includeDirs: [path.join(__dirname, '..', '..', 'proto')],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { hailuo } = grpc.loadPackageDefinition(definition);

// Wire-compatible copies of google.rpc.Status and the details the gateway
// sends, to decode the grpc-status-details-bin trailer.
const rpc = protobuf.parse(`
  syntax = "proto3";
  package rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message RetryInfo { Duration retry_delay = 1; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
`, { keepCase: true }).root;
const DETAIL_TYPES = {
  'type.googleapis.com/google.rpc.ErrorInfo': 'rpc.ErrorInfo',
  'type.googleapis.com/google.rpc.RetryInfo': 'rpc.RetryInfo',
  'type.googleapis.com/google.rpc.BadRequest': 'rpc.BadRequest',
};
const DECODE = { longs: String, enums: String, defaults: true };

/** The decoded google.rpc.Status of a failed call, details keyed by type. */
function richStatus(err) {
  const [bin] = err.metadata.get('grpc-status-details-bin');
  assert.ok(bin, 'no grpc-status-details-bin trailer');
  const Status = rpc.lookupType('rpc.Status');
  const status = Status.toObject(Status.decode(bin), DECODE);
  const details = {};
  for (const any of status.details) {
    const name = DETAIL_TYPES[any.type_url];
    if (!name) continue;
    const type = rpc.lookupType(name);
    details[name.slice(4)] = type.toObject(type.decode(any.value), DECODE);
  }
  return { code: status.code, message: status.message, details };
}

const IMAGE = 'https://example.com/cat.png';
const addr = process.argv[2];
const client = new hailuo.v1.VideoGeneration(addr, grpc.credentials.createInsecure());
const deadline = (seconds) => ({ deadline: Date.now() + seconds * 1000 });

function unary(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, deadline(30), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function expectError(method, request, code) {
  try {
    await unary(method, request);
  } catch (err) {
    assert.equal(err.code, code, `code ${grpc.status[err.code]} (${err.details}), want ${grpc.status[code]}`);
    return richStatus(err);
  }
  assert.fail(`${method} succeeded, want ${grpc.status[code]}`);
}

function watch(taskId) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const stream = client.WatchTask({ task_id: taskId }, deadline(90));
    stream.on('data', (message) => messages.push(message));
    stream.on('error', reject);
    stream.on('end', () => resolve(messages));
  });
}

const checks = {
  async a_task_is_created_and_watched_to_success() {
    const created = await unary('CreateTask', {
      prompt: 'a cat surfing a wave at sunset',
      image_url: IMAGE,
      duration: 'VIDEO_DURATION_6_SECONDS',
      resolution: 'RESOLUTION_768P',
    });
    assert.match(created.task_id, /^[A-Za-z0-9_-]+$/);

    const messages = await watch(created.task_id);
    const states = messages.filter((m) => !m.heartbeat).map((m) => m.task.state);
    assert.deepEqual(states, ['TASK_STATE_WAITING', 'TASK_STATE_QUEUING', 'TASK_STATE_GENERATING', 'TASK_STATE_SUCCEEDED']);
    const last = messages[messages.length - 1].task;
    assert.equal(last.task_id, created.task_id);
    assert.ok(last.video_urls.length > 0 && last.video_urls[0].startsWith('http'), `video_urls ${last.video_urls}`);
    assert.ok(last.complete_time && last.complete_time.seconds > 0, 'no complete_time');

    const got = await unary('GetTask', { task_id: created.task_id });
    assert.equal(got.task.state, 'TASK_STATE_SUCCEEDED');
    assert.deepEqual(got.task.video_urls, last.video_urls);
  },

  async a_rate_limited_create_carries_error_info_and_retry_info() {
    const status = await expectError('CreateTask', { prompt: '[sim:429] a cat', image_url: IMAGE },
      grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(status.code, grpc.status.RESOURCE_EXHAUSTED);
    const info = status.details.ErrorInfo;
    assert.ok(info, `no ErrorInfo in ${Object.keys(status.details)}`);
    assert.equal(info.reason, 'UPSTREAM_RATE_LIMITED');
    assert.equal(info.domain, 'kie.ai');
    assert.equal(info.metadata.kie_code, '429');
    assert.equal(status.details.RetryInfo.retry_delay.seconds, '3');
  },

  async an_invalid_image_url_is_invalid_argument_naming_the_field() {
    const status = await expectError('CreateTask', { prompt: 'a cat', image_url: 'not a url' },
      grpc.status.INVALID_ARGUMENT);
    assert.equal(status.details.ErrorInfo.reason, 'INVALID_REQUEST');
    assert.equal(status.details.ErrorInfo.domain, 'hailuo-gateway');
    assert.deepEqual(status.details.BadRequest.field_violations.map((v) => v.field), ['image_url']);
  },

  async generate_video_refuses_an_invalid_request_before_any_message() {
    const messages = [];
    const err = await new Promise((resolve) => {
      const stream = client.GenerateVideo({ create: { prompt: 'a cat', image_url: 'not a url' } }, deadline(30));
      stream.on('data', (message) => messages.push(message));
      stream.on('error', resolve);
      stream.on('end', () => resolve(null));
    });
    assert.ok(err, 'the stream ended OK');
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `code ${grpc.status[err.code]} (${err.details})`);
    assert.equal(messages.length, 0, `${messages.length} messages before the error`);
    const status = richStatus(err);
    assert.equal(status.details.ErrorInfo.reason, 'INVALID_REQUEST');
    assert.deepEqual(status.details.BadRequest.field_violations.map((v) => v.field), ['image_url']);
  },
};

async function main() {
  const results = await Promise.all(Object.entries(checks).map(async ([name, check]) => {
    try {
      await check();
      return `ok ${name}`;
    } catch (err) {
      return `not ok ${name}: ${String(err && err.message).replace(/\s+/g, ' ')}`;
    }
  }));
  client.close();
  for (const line of results) console.log(line);
  process.exitCode = results.some((line) => line.startsWith('not ok')) ? 1 : 0;
}

main();

// The seed JobQ's load shape: ramp to 20, then 40 virtual users, each posting
// {userId: random} to /jobs/email_welcome and sleeping 0.2 s. The seed
// published 8.35 ms avg / 16.09 ms p95 HTTP duration for it.
//   k6 run k6/post-jobs-benchmark.js
// `cargo xtask bench seed` runs the same shape with the Rust load generator
// (the one our published figures come from).
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';

export const options = {
  stages: [
    { duration: '30s', target: 20 },
    { duration: '30s', target: 40 },
  ],
  thresholds: {
    http_req_failed: ['rate<0.01'],
  },
};

export default function () {
  let userId = Math.floor(Math.random() * 1000000) + 1;
  if (userId === 777) userId = 778; // 777 is the example plugin's always-failing user
  const res = http.post(`${BASE_URL}/jobs/email_welcome`, JSON.stringify({ userId }), {
    headers: { 'Content-Type': 'application/json' },
  });
  check(res, { 'accepted (202)': (r) => r.status === 202 });
  sleep(0.2);
}

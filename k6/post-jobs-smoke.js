// Smoke test: one virtual user submits a handful of jobs and checks each is accepted.
//   k6 run k6/post-jobs-smoke.js                 (against http://127.0.0.1:8080)
//   BASE_URL=http://host:8080 k6 run k6/post-jobs-smoke.js
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';

export const options = {
  vus: 1,
  iterations: 10,
  thresholds: { checks: ['rate==1'] },
};

export default function () {
  const res = http.post(`${BASE_URL}/jobs/email_welcome`, JSON.stringify({ userId: __ITER + 1 }), {
    headers: { 'Content-Type': 'application/json' },
  });
  check(res, {
    'accepted (202)': (r) => r.status === 202,
    'has a job id': (r) => r.json('jobId') > 0,
  });
  sleep(0.2);
}

"""`py_counter`: a jobhost plugin in Python, built with componentize-py.

Payload: {"word": "..."}. Counts how often each word has been seen, in the
plugin's key-value store, and returns {"word": ..., "seen": n}.
"""
import json

import wit_world
from wit_world.imports import host, kv, types
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def handle(self, job: types.Job):
        try:
            word = json.loads(job.payload)["word"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(types.Failure_Fatal(f"payload must be {{\"word\": <string>}}: {e}"))
        key = f"seen:{word}"
        seen = int(kv.get(key) or b"0") + 1
        kv.set(key, str(seen).encode())
        host.log(host.Level.INFO, f"{word} seen {seen} times")
        return json.dumps({"word": word, "seen": seen})

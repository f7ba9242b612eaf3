"""`ray job submit` entry point for the end-to-end demo.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".git", ".venv", ".cache", "runs"]}' \
        -- python jobs/demo.py run.name=from-job ppo.steps=4

Inside a job, `ray.init()` attaches to the cluster the job was submitted to; outside one
it starts a local Ray instance. Arguments are the same as `raydprm demo`.
"""

import sys

from raydprm.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))

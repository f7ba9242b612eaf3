"""`ray job submit` entry point for the end-to-end demo.

    export RAY_AUTH_MODE=token           # Ray 2.60 token auth: the client sends ~/.ray/auth_token
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"HF_HUB_OFFLINE": "1"}, "excludes": [".git", ".venv", ".cache", "runs"]}' \
        -- python jobs/demo.py run.output_dir=/shared/raydprm run.name=from-job ppo.steps=4

Inside a job, raydprm attaches to the cluster the job was submitted to and passes no
runtime env of its own (the job's applies to every worker; Ray refuses to merge two that
set the same env vars). Outputs go to ``run.output_dir``: give an absolute path every node
can write, since the job's working directory is a temporary copy Ray deletes. Outside a
job it starts a local Ray instance. Arguments are the same as `raydprm demo`.
"""

import sys

from raydprm.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))

"""`ray job submit` entry point of `raydprm run` (the pipeline); `--smoke` for tiny sizes.

    export RAY_AUTH_MODE=token           # Ray 2.60 token auth: the client sends ~/.ray/auth_token
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"HF_HUB_OFFLINE": "1"}, "excludes": [".git", ".venv", ".cache", "runs"]}' \
        -- python jobs/run.py --smoke run.output_dir=/shared/raydprm run.name=from-job

Inside a job raydprm attaches to the job's cluster and passes no runtime env of its own (the
job's applies to every worker). Outputs go to ``run.output_dir/run.name``, which must be an
absolute path every node can write: a relative one is refused, since the job's working
directory is a temporary copy Ray deletes. Object storage: mount the bucket at the same path
on every node (mountpoint-s3, gcsfuse, s3fs); a URI (``s3://...``) is refused, since every
role writes its outputs as files from its own node. ``--resume <run dir>`` continues a killed run.
Arguments are those of `raydprm run`.
"""

import sys

from raydprm.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

"""`ray job submit` entry point of `raydprm sweep` (a Ray Tune sweep of the pipeline).

    export RAY_AUTH_MODE=token           # Ray 2.60 token auth: the client sends ~/.ray/auth_token
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"HF_HUB_OFFLINE": "1"}, "excludes": [".git", ".venv", ".cache", "runs"]}' \
        -- python jobs/sweep.py sweeps/beta.yaml run.output_dir=/shared/raydprm

The sweep directory is ``run.output_dir/<sweep name>``: Tune's storage and every trial's run
directory. It must be an absolute path every node mounts (NFS, a PersistentVolumeClaim): a
relative one is refused inside a job, and a node that cannot see it fails the sweep with an
error saying so. ``--resume <sweep dir>`` continues an interrupted sweep; ``--smoke`` for tiny
sizes. Arguments are those of `raydprm sweep`.
"""

import sys

from raydprm.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))

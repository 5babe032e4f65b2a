#!/bin/bash
# harvester-edge local worker ${worker_id} (${job_name}): rendered from the local template; local-run.sh runs it
# under `timeout` for the walltime and records its exit code.
${env_setup}
${env_exports}
cd ${access_point_q} || exit 97
${launch}

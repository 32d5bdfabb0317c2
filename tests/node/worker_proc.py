"""A worker process for claim tests: ``python worker_proc.py CONFIG.yaml WORKER_ID`` runs jobs until the queue
has stayed empty for a few polls, then exits 0."""
from __future__ import annotations

import sys
import time

from dicomnode.config import load_config
from dicomnode.db import make_engine, make_session_factory
from dicomnode.processing import make_processor
from dicomnode.worker import Worker


def main(config_path: str, worker_id: str) -> int:
    config = load_config(config_path, environ={})
    engine = make_engine(config.database_url)
    worker = Worker(config, make_session_factory(engine), make_processor(config), worker_id=worker_id)
    idle = 0
    while idle < 10:
        if worker.run_once():
            idle = 0
        else:
            idle += 1
            time.sleep(0.2)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

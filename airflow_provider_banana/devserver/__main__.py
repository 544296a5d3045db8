"""Run the Banana devserver: ``python -m airflow_provider_banana.devserver --help``."""

from __future__ import annotations

import sys

from airflow_provider_banana.devserver.cli import main

if __name__ == "__main__":
    sys.exit(main())

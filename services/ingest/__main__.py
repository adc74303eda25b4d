"""python -m services.ingest"""

import sys

from libs.common.service import run
from services.ingest.app import spec
from services.ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    # Bodies are parsed and validated on worker threads; where those run Python, the event loop waits
    # for the GIL up to the switch interval at each hand-over, several times per /healthz answer.
    # 1 ms instead of 5 keeps the probes answered while a large body is validated.
    sys.setswitchinterval(settings.switch_interval_s)
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

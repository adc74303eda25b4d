"""python -m services.monitor"""

from libs.common.service import run
from services.monitor.app import spec
from services.monitor.settings import MonitorSettings


def main() -> None:
    settings = MonitorSettings()
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

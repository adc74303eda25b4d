"""python -m services.console"""

import uvicorn

from libs.common.telemetry import configure_logging
from services.console.app import create_app
from services.console.settings import ConsoleSettings


def main() -> None:
    settings = ConsoleSettings()
    configure_logging("console", settings.telemetry)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()

"""python -m services.serving"""

from libs.common.service import run
from services.serving.app import spec
from services.serving.settings import ServingSettings


def main() -> None:
    settings = ServingSettings()
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

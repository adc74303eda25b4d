"""python -m services.trainer"""

from libs.common.service import run
from services.trainer.app import spec
from services.trainer.settings import TrainerSettings


def main() -> None:
    settings = TrainerSettings()
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

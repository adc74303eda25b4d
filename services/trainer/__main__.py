"""python -m services.trainer"""

from libs.common.process import one_openmp_thread
from libs.common.service import run
from services.trainer.app import spec
from services.trainer.settings import TrainerSettings


def main() -> None:
    one_openmp_thread()  # job workers, started later, read it when scikit-learn loads OpenMP
    settings = TrainerSettings()
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

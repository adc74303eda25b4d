"""python -m services.serving"""

from libs.common.process import one_openmp_thread
from libs.common.service import run
from libs.common.telemetry import configure_logging
from services.serving.app import spec
from services.serving.settings import ServingSettings
from services.serving.workers import supervise


def main() -> None:
    one_openmp_thread()  # before scikit-learn (imported lazily, after start) loads OpenMP; workers inherit it
    settings = ServingSettings()
    if settings.workers > 1:
        configure_logging("serving", settings.telemetry)
        supervise(settings)
    else:
        run(spec(settings), settings, reuse_port=settings.reuse_port)


if __name__ == "__main__":
    main()

"""python -m services.ingest"""

from libs.common.service import run
from services.ingest.app import spec
from services.ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

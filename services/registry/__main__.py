"""python -m services.registry"""

from libs.common.service import run
from services.registry.app import spec
from services.registry.settings import RegistrySettings


def main() -> None:
    settings = RegistrySettings()
    run(spec(settings), settings)


if __name__ == "__main__":
    main()

"""python -m libs.cli"""

from libs.cli.main import main

main()

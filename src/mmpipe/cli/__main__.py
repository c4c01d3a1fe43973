"""``python -m mmpipe.cli``."""

from . import main

main()

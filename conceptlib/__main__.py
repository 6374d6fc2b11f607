"""``python -m conceptlib`` runs the CLI, so ``torchrun -m conceptlib`` works too.

``-m`` puts the current directory first on ``sys.path``; it is taken off before anything else is imported,
so a module or ``*.dist-info`` someone left in the directory a command runs in is never loaded as code.
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from conceptlib.cli import main

main()

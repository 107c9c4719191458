"""`python -m core <command>`: a shim kept so documented commands work; the command line lives in `cli/`.

This is the one module of `core/` allowed to import a higher layer.
"""

from cli.main import main

raise SystemExit(main())

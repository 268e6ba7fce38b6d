"""``python -m workbench`` is the ``workbench`` command."""

from workbench.ui.cli import main

raise SystemExit(main())

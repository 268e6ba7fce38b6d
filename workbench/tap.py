"""``workbench.tap``, a public name (code outside the project uses it); the module lives in ``workbench.io.tap``.

``from workbench import tap`` and ``import workbench.tap`` both give that very module (not a copy), so
``isinstance`` checks and monkeypatching behave as before the package was grouped by layer.
"""

import sys

from workbench.io import tap as _tap

sys.modules[__name__] = _tap

"""The plugin contract: the one page a plugin author reads.

Plugins are modules found through the ``conceptlib`` entry-point group (first-party ones included:
``conceptlib_scenes``, ``conceptlib_mujoco``, ``conceptlib_imagefolder``, ``conceptlib_nets``) or single
``.py`` files in the directory named by ``--plugins-dir`` / ``CONCEPTLIB_PLUGINS_DIR`` (never from the current
directory). A plugin implements any of the hooks below with ``@hookimpl``; each hook returns a list of the
objects it names, and every name across all plugins must be unique. A plugin whose import or hook raises,
calls ``sys.exit`` or returns anything else is refused in one line that names it.

Example::

    from conceptlib.hookspecs import hookimpl
    from conceptlib.sources import Source

    class MySource(Source):
        name = "mine"
        ...

    @hookimpl
    def conceptlib_sources():
        return [MySource()]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from conceptlib.architectures import Architecture
    from conceptlib.sources import Source

hookspec = pluggy.HookspecMarker("conceptlib")
hookimpl = pluggy.HookimplMarker("conceptlib")


@hookspec
def conceptlib_sources() -> list[Source]:
    """Dataset sources this plugin provides (``concept add --source NAME``).

    Called once when the plugin manager is first asked for sources.
    """


@hookspec
def conceptlib_architectures() -> list[Architecture]:
    """Network architectures this plugin provides (``concept add --arch NAME``).

    Each builds networks of one of the kinds in :mod:`conceptlib.architectures` (``EnergyNet``,
    ``NoisyEnergyNet``, ``DenoiserNet``, ``ClassifierNet``), which say what the sampler calls and which class
    attributes declare the kind. Versions record the architecture's name and config, so the plugin must stay
    installed for concepts trained with it to load; ``Architecture.migrate`` upgrades configs an older
    release of the plugin stored.
    """

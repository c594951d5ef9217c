"""robocl's simulated tasks, importable as ``robocl_envs``.

Importing this package registers every task with gymnasium under the ``robocl/`` namespace.
Each task module exposes ``register()``; task families expose their ordered task ids in ``FAMILIES``.
"""

from robocl_envs import cheetah, door, pick_place, push

FAMILIES: dict[str, list[str]] = {}

for _module in (cheetah, pick_place, push, door):
    FAMILIES.update(_module.register())

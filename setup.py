"""Package discovery (everything else is in pyproject.toml).

pyproject.toml alone cannot combine automatic discovery with the ``tasks/`` -> ``muse_quant_tasks``
mapping, so the packages are found here: every package under ``harness_ext/`` and every folder of
``tasks/``. A new subpackage needs no edit.
"""

from setuptools import find_namespace_packages, find_packages, setup

TASKS = "muse_quant_tasks"

setup(
    packages=find_packages(include=["harness_ext", "harness_ext.*"])
    + [TASKS] + [f"{TASKS}.{name}" for name in find_namespace_packages("tasks", exclude=["*__pycache__*"])],
    package_dir={TASKS: "tasks"},
)

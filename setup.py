"""Computes the package list for the custom package-dir mapping in pyproject.toml.

With a custom ``package-dir`` setuptools does not discover subpackages on its own, and a
subpackage missing from ``packages`` is silently left out of the wheel
(tests/test_packaging.py builds the wheel and checks every module is inside).
"""

from setuptools import find_packages, setup

ROOTS = {"dynvlm": "core", "dynvlm.plugins": "plugins", "dynvlm.kernels": "kernels"}


def packages() -> list[str]:
    found = []
    for package, folder in ROOTS.items():
        found.append(package)
        found += [f"{package}.{sub}" for sub in find_packages(folder)]
    return found


setup(packages=packages())

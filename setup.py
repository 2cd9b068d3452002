from setuptools import setup

# Beam workers install the package with --setup_file=./setup.py; everything is in pyproject.toml.
setup()

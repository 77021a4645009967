"""Imported first by every job: keep ``jobs/`` off the import path.

Python puts a script's own directory first on ``sys.path``, where
``jobs/pipeline.py`` would shadow the ``pipeline`` package.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.modules.pop("pipeline", None)

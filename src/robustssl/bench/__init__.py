"""The main job: the quickstart pipeline (``quickstart.py``); spec, runner, store and report to come."""

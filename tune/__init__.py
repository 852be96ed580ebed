"""The Ray Tune sweep runner: `python tune/sweep.py --preset NAME`. The only package that imports Ray."""

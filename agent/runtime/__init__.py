"""The continual-learning runtime: serve, learn, bake when idle, swap in (`bakehouse run`).

    config.py   RuntimeConfig
    hot.py      the hot tier: per served version, the memories its weights do not hold
    feedback.py instructions from users' feedback (stated, or proposed by the tenant's model)
    episodes.py conversations through the gateway: recorded, closed when idle, summarised
    planner.py  what to bake next (pure)
    learner.py  the loop: plan, run, gate, publish, graduate, roll back
    bakes.py    a bake job's process group (pause / resume / kill)
    worker.py   the bake job itself: bake a layer, stack, verify
    procs.py    one runtime per home, no orphaned processes
    runtime.py  gateway + vLLM + scheduler in one process tree
    status.py   what `bakehouse status` shows
"""
from .config import RuntimeConfig

__all__ = ["RuntimeConfig"]

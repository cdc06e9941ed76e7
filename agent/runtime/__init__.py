"""The continual-learning runtime: serve, learn, bake when idle, swap in (`bakehouse run`).

    config.py   RuntimeConfig
    hot.py      the hot tier: per request, the memories the served weights lack that it is about
    served.py   the one record of what each tenant is served and what each version holds
    feedback.py instructions from users' feedback (stated, or proposed by the tenant's model)
    episodes.py conversations through the gateway: recorded, closed when idle, what the user said kept
    planner.py  what to bake next (pure)
    learner.py  the loop: plan, run, gate, publish, graduate, roll back
    bakes.py    a bake job's process group (pause / resume / kill)
    worker.py   the bake job itself: bake a layer, stack, verify
    procs.py    one runtime per home, no orphaned processes
    runtime.py  gateway + vLLM + scheduler in one process tree
    status.py   what `bakehouse status` shows (stuck tenants included)
"""
from .config import RuntimeConfig

__all__ = ["RuntimeConfig"]

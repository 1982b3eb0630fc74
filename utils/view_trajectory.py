"""Show the order in which the decoder unmasked one response's tokens (same as `t3d-view`).

    python utils/view_trajectory.py data/rollout_example_sdar-tiny.json --item 0 --html trajectory.html
"""
from t3d.commands import view

if __name__ == "__main__":
    view()

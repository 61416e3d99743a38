"""Task plugins: one file per task, each meeting the contract in `tasks.base`.

A task is registered by a YAML file in `conf/task/` whose `_target_` names its class.
"""

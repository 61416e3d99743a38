"""Sequence backbones: one file per architecture, each meeting the contract in `archs.base`.

A backbone is registered by a YAML file in `conf/arch/` whose `_target_` names its class; nothing
here keeps a list of them.
"""

"""Outer optimizers: metagradient descent on training metaparameters (data, schedules, inputs)."""

from mgd.outer.checkpointing import OuterCheckpointer as OuterCheckpointer

"""Reliability suites: crashes, faults, bad input, full disks, corrupt files, clock jumps, long outages.

The promise under test: what the agent acknowledged is delivered or visibly parked, through any of it.
"""

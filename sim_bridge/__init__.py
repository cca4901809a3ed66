"""Simulator bridge: episode readers, the tabletop simulator, offline replay and a planner demo.

It drives the foresight node as a client, like a robot controller; it never imports the model.
"""

"""Simulator bridge: the robot's side of the project, in four parts that import downwards only.

- `sim_bridge.common`: frame fitting and media writing, PSNR/SSIM, logging set-up, atomic files.
- `sim_bridge.data`: the `Episode` type and its readers and writers (our format, BridgeData V2
  raw, LeRobot v3, RLDS, ROS bags).
- `sim_bridge.simulator`: the Bridge-style tabletop simulator, its tasks and instructions,
  ground-truth scoring and the Gymnasium environment.
- `sim_bridge.apps`: robot-side programs: offline replay, the planner, the closed-loop runtime
  and the demo.

It drives the foresight node as a client, like a robot controller: of the project it imports
only `foresight_client`, never the model.
"""

"""Episodes and their formats: the `Episode` type, our lossless format, BridgeData V2 raw,
LeRobot v3 (with its statistics), RLDS and ROS bag readers (and writers where we write), and
`readers` that finds any of them."""

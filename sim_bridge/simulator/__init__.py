"""The Bridge-style tabletop simulator: scenes and scripted tasks (`tabletop`), instruction
wording, seed ranges (`tasks`), ground-truth scoring and the Gymnasium environment (`gym_env`)."""

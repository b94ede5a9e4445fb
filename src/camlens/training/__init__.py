"""Training CAM networks: the loop, its training methods (``wsol``), selection by localization, search."""

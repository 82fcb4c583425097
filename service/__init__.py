"""rewardscope: live reward-driven analysis of microscope frames."""

__version__ = "0.1.0"

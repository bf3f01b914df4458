"""The FreezeOut controller (``freezeout.py``): the schedule applied to an optimizer and the layers frozen on time;
its face to libraries that expect a torch LR scheduler (``scheduler.py``); how it is driven, watched from the
optimizer's side (``driving.py``)."""

from .freezeout import FreezeOut, ScheduleWarning

__all__ = ["FreezeOut", "ScheduleWarning"]

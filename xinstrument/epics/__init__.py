"""xinstrument.epics"""

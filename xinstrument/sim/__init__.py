"""xinstrument.sim"""

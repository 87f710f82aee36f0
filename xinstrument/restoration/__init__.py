"""xinstrument.restoration"""

"""xinstrument.gui"""

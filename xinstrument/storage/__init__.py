"""xinstrument.storage"""

"""xinstrument.scans"""

"""xinstrument.calibration"""

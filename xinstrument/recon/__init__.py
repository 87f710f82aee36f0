"""xinstrument.recon"""

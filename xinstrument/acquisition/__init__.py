"""xinstrument.acquisition"""

"""(to be written)"""
MODELS = {}
